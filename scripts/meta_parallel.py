"""Meta's reference model run with real model parallelism on the CPU: one process per rank.

Each process joins a gloo process group (rendezvous through a file, no network port), sets up
fairscale model parallel of size N, and runs a function; the results come back rank by rank.
`meta_logits_model_parallel` loads a checkpoint folder the way Meta's Llama3.build does
(llama_models.checkpoint.maybe_reshard_state_dict over every consolidated.*.pth, then
load_state_dict(strict=True) into Meta's Transformer built in bfloat16) and runs the forward pass.

    from meta_parallel import meta_logits_model_parallel, run_model_parallel
    logits = meta_logits_model_parallel(ckpt_dir, token_ids, world_size=2)   # [T, V] float32
    results = run_model_parallel(2, fn, *args)   # fn(rank, *args) in each process; picklable by reference

The processes are started with "spawn": a script that calls these must keep its own work under
`if __name__ == "__main__":` (each process imports the calling script's module again).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def _rank_main(rank: int, world_size: int, rendezvous: str, result_dir: str, fn, args) -> None:
    import fairscale.nn.model_parallel.initialize as fs_init

    torch.set_num_threads(1)  # N processes share the machine's cores
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale and Meta's loader print status lines
            fs_init.initialize_model_parallel(world_size)
            result = fn(rank, *args)
        torch.save(result, Path(result_dir) / f"{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def run_model_parallel(world_size: int, fn, *args) -> list:
    """fn(rank, *args) in world_size processes under fairscale model parallel of that size; the results by rank.

    fn must be importable by name (a module-level function) and its result saveable by torch.save.
    A failure in any process raises here with that process's traceback."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        rendezvous = os.path.join(tmp, "rendezvous")
        mp.spawn(_rank_main, args=(world_size, rendezvous, tmp, fn, args), nprocs=world_size, join=True)
        return [torch.load(Path(tmp) / f"{rank}.pt", weights_only=True) for rank in range(world_size)]


def _meta_logits_on_rank(rank: int, ckpt_dir: str, token_ids: list[int]) -> torch.Tensor:
    from llama_models.checkpoint import maybe_reshard_state_dict
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    params = json.loads((Path(ckpt_dir) / "params.json").read_text())
    args = ModelArgs(max_seq_len=len(token_ids), max_batch_size=1, **params)
    # Meta's loader: this rank's file(s), merged or split if the file count differs from the world size.
    state_dict = maybe_reshard_state_dict(
        sorted(Path(ckpt_dir).glob("*.pth")), n_kv_heads=args.n_kv_heads if args.n_kv_heads else args.n_heads
    )
    torch.set_default_dtype(torch.bfloat16)  # as Meta's generation code builds the model on a GPU
    model = Transformer(args)
    model.load_state_dict(state_dict, strict=True)
    with torch.inference_mode():
        return model(torch.tensor([token_ids]), start_pos=0)[0].float()


def meta_logits_model_parallel(ckpt_dir: Path, token_ids, world_size: int) -> torch.Tensor:
    """Float32 logits [T, V] of Meta's Transformer split over world_size processes, from ckpt_dir's shards."""
    per_rank = run_model_parallel(world_size, _meta_logits_on_rank, str(ckpt_dir), list(token_ids))
    # the output layer gathers the vocabulary on every rank: all ranks hold the same logits
    for rank, logits in enumerate(per_rank[1:], 1):
        if not torch.equal(logits, per_rank[0]):
            raise AssertionError(f"rank {rank}'s logits differ from rank 0's")
    return per_rank[0]


if __name__ == "__main__":  # python scripts/meta_parallel.py CKPT_DIR WORLD_SIZE: top 5 next tokens
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
    import llama3

    ck_dir, world = Path(sys.argv[1]), int(sys.argv[2])
    config = llama3.read_params(ck_dir)
    tok = llama3.load_tokenizer(ck_dir / "tokenizer.model", config.release)
    ids = llama3.encode_prompt(tok, llama3.DEFAULT_PROMPT, config)
    top = meta_logits_model_parallel(ck_dir, ids, world)[-1].topk(5)
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{i:7d} {tok.decode([i])!r} logit {p:.3f}")
