"""Run Llama 3 tensor-parallel: one process per shard, over torch.distributed (llama3.parallel).

Started by torchrun, each process (rank r) memory-maps only consolidated.0r.pth of LLAMA3_DIR, and rank 0
prints the prompt's top 5 next tokens and LLAMA3_MAX_NEW_TOKENS greedy tokens generated with each rank's
key/value cache, and writes build/run-tp-summary.json (the fields of `make run`'s run-summary.json).
Without LLAMA3_DIR it runs the demo checkpoint cut into as many shards as there are processes
(build/llama3-demo-N-shards, written if missing).

    torchrun --standalone --nproc-per-node 2 scripts/run/run_tp.py    # one machine, two processes
    python scripts/run/run_tp.py --nproc-per-node 2                    # the same (`make run-tp NPROC=2`)

Bad input stops every rank; rank 0 prints one message and every rank exits with code 2.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import llama3

REPO = llama3.REPO_DIR

DEFAULT_NEW_TOKENS = 16


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, default=None, help="start torchrun with this many processes")
    parser.add_argument(
        "--save-logits", type=Path, help="rank 0 saves the prompt's float32 logits and the generated ids here"
    )
    parser.add_argument("--summary", type=Path, default=REPO / "build" / "run-tp-summary.json")
    return parser.parse_args(argv)


def launch(args: argparse.Namespace, argv: list[str]) -> None:
    """Not started by torchrun: start it here (torch.distributed.run, in this process) with this script as each
    worker, and turn its failure into one line and the workers' exit code instead of torchrun's traceback."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if "LOGLEVEL" not in os.environ:  # torchrun logs each failure and SIGTERM; they are summed up in one line below
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)

    worker_args = list(argv)  # this script's arguments, less --nproc-per-node, which is torchrun's
    if "--nproc-per-node" in worker_args:
        i = worker_args.index("--nproc-per-node")
        del worker_args[i : i + 2]
    worker_args = [a for a in worker_args if not a.startswith("--nproc-per-node=")]
    n = args.nproc_per_node or 1
    config = torchrun.parse_args(["--standalone", "--nproc-per-node", str(n), "-m", __spec__.name, *worker_args])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # the cores shared out
    try:
        torchrun.run(config)
    except ChildFailedError as e:
        codes = {rank: failure.exitcode for rank, failure in sorted(e.failures.items())}
        if 2 in codes.values():  # bad input, which rank 0 has already explained
            sys.exit(2)
        how = ", ".join(
            f"rank {r} " + (f"was killed by signal {-c}" if c < 0 else f"exited with code {c}")
            for r, c in codes.items()
        )
        print(f"run_tp: stopped: {how} (torchrun ends every rank when one fails).", file=sys.stderr)
        sys.exit(1)


def demo_shards(n_shards: int, local_rank: int) -> Path:
    """The demo checkpoint cut into n_shards (build/llama3-demo-N-shards): written by the first process of the
    machine if missing, into a temporary folder renamed when complete, so no rank reads a half-written one."""
    import llama3

    target = llama3.REPO_DIR / "build" / f"llama3-demo-{n_shards}-shards"
    if local_rank == 0 and not (target / "params.json").exists():
        demo = llama3.load_checkpoint(llama3.DEMO_DIR, device="cpu")
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        llama3.reshard(demo, partial, n_shards)
        if target.exists():  # left over without params.json: incomplete
            import shutil

            shutil.rmtree(target)
        partial.rename(target)
    return target


def stop_all(rank: int, message: str) -> None:
    """Every rank leaves with code 2; rank 0 alone says why."""
    import torch.distributed as dist

    if rank == 0:
        print(f"\nerror: {message}", file=sys.stderr, flush=True)
    dist.barrier()  # the others wait for that line: torchrun stops every rank as soon as one has exited
    dist.destroy_process_group()
    sys.exit(2)


def work(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import llama3

    rank, world_size, device = llama3.init_tensor_parallel()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    started = time.perf_counter()

    ckpt_dir, error = None, None
    try:
        ckpt_dir = llama3.checkpoint_dir() if os.environ.get("LLAMA3_DIR") else demo_shards(world_size, local_rank)
    except llama3.Llama3InputError as e:
        error = str(e)
    message = llama3.first_error(llama3.exchange_errors(error))  # also waits for the demo's shards to be written
    if message:
        stop_all(rank, message)

    shard = prompt = token_ids = tokenizer = None
    try:
        if not (ckpt_dir / "params.json").exists():
            llama3.checkpoint_layout(ckpt_dir)  # no folder, no shards, or params.json missing: says which
        shard = llama3.load_rank_shard(ckpt_dir, llama3.read_params(ckpt_dir), rank, world_size, device)
        tokenizer_path = ckpt_dir / "tokenizer.model"
        if not tokenizer_path.exists():  # a model whose tokenizer is not Llama 3's carries tokenizer.json
            tokenizer_path = ckpt_dir / "tokenizer.json"
        tokenizer = llama3.load_tokenizer_file(tokenizer_path, shard.config.release)
        if tokenizer.n_vocab != shard.config.vocab_size:
            raise llama3.CheckpointError(
                f"{llama3.tokenizer_count_text(tokenizer, tokenizer_path)}, but params.json's vocab_size is "
                f"{shard.config.vocab_size}. Use the tokenizer that came with this checkpoint."
            )
        prompt = llama3.prompt_text()
        token_ids = llama3.encode_prompt(tokenizer, prompt, shard.config)
    except llama3.Llama3InputError as e:
        error = str(e)
    message = llama3.first_error(llama3.exchange_errors(error))
    if message:
        stop_all(rank, message)
    seconds = {"load": round(time.perf_counter() - started, 2)}

    try:
        started = time.perf_counter()
        with torch.inference_mode():
            logits = llama3.tp_forward(shard, token_ids)
        seconds["forward"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        n_new = int(os.environ.get("LLAMA3_MAX_NEW_TOKENS", DEFAULT_NEW_TOKENS))
        with torch.inference_mode():
            generation = llama3.tp_generate(shard, token_ids, n_new, llama3.stop_token_ids(tokenizer))
        seconds["generate"] = round(time.perf_counter() - started, 2)
    except RuntimeError as e:  # a peer died or stopped answering (torch.distributed.DistBackendError, a timeout)
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first_line = text.split("] ", 1)[-1][:160]  # without gloo's source location
        print(f"\nerror: rank {rank} lost contact with the other ranks ({first_line}).", file=sys.stderr, flush=True)
        os._exit(1)  # the process group cannot be shut down cleanly without the lost rank

    llama3.dump_maps(rank)  # with $LLAMA3_TP_DUMP_MAPS (a test's hook): the files this process has mapped
    if rank == 0:
        report_rank0(args, shard, ckpt_dir, prompt, token_ids, tokenizer, logits, generation, seconds)
    dist.destroy_process_group()


def report_rank0(args, shard, ckpt_dir, prompt, token_ids, tokenizer, logits, generation, seconds) -> None:
    import torch

    import llama3

    c = shard.config
    print(f"{ckpt_dir}: {shard.world_size} processes, rank r reads consolidated.0r.pth only")
    print(
        f"each rank: {shard.heads_config.n_heads} of {c.n_heads} query heads, {shard.heads_config.n_kv_heads} of "
        f"{c.n_kv_heads} key/value heads, {c.ffn_hidden_dim // shard.world_size} of {c.ffn_hidden_dim} FFN units, "
        f"{shard.vocab_end - shard.vocab_start} of {c.vocab_size} vocabulary rows"
    )
    top5 = llama3.top_k_tokens(logits[-1], tokenizer, 5)
    print(f"\nprompt: {prompt!r}")
    print(f"tokens: {len(token_ids)}")
    print("top 5 next tokens:")
    for place, (token_id, text, prob) in enumerate(top5, 1):
        print(f"  {place}. {token_id:>6}  {text!r:<16} {prob:.4f}")
    generated = tokenizer.decode(generation.token_ids)
    print(f"\ngenerated ({len(generation.token_ids)} tokens, {generation.stop_reason}): {generated!r}")
    report = {
        "model_dir": str(ckpt_dir), "prompt": prompt, "seconds": seconds, "token_ids": list(token_ids),
        "top5": [{"id": i, "text": t, "probability": p} for i, t, p in top5],
        "processes": shard.world_size, "generated_ids": generation.token_ids, "generated_text": generated,
    }  # fmt: skip
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"summary: {args.summary}")
    if args.save_logits:
        torch.save(
            {"logits": logits, "token_ids": list(token_ids), "generated_ids": generation.token_ids,
             "step_logits": torch.stack(generation.step_logits) if generation.step_logits else None},
            args.save_logits,
        )  # fmt: skip


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if "RANK" not in os.environ:
        launch(args, argv)
    else:
        work(args)


if __name__ == "__main__":
    main()
