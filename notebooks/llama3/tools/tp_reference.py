"""Meta's reference model (llama_models.llama3.model.Transformer) run model-parallel on Meta's shards, as Meta's
own generation code runs it: started by torchrun with one process per shard, fairscale model parallel of that
size, and each rank's Transformer holding its own consolidated.0r.pth (load_state_dict, strict). The yardstick
for llama3.parallel (tests/test_tensor_parallel.py). Rank 0 saves the prompt's float32 logits [T, V].

    torchrun --standalone --nproc-per-node 2 -m llama3.tools.tp_reference CKPT_DIR OUT.pt
"""

import contextlib
import io
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import llama3


def main() -> None:
    import fairscale.nn.model_parallel.initialize as fs_init
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    ckpt_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=llama3.tp_timeout())
    rank, world_size = dist.get_rank(), dist.get_world_size()
    with contextlib.redirect_stdout(io.StringIO()):  # fairscale prints its group sizes
        fs_init.initialize_model_parallel(world_size)
    params = json.loads((ckpt_dir / "params.json").read_text())
    config = llama3.read_params(ckpt_dir)
    tokenizer = llama3.load_tokenizer(ckpt_dir / "tokenizer.model", config.release)
    token_ids = llama3.encode_prompt(tokenizer, llama3.prompt_text(), config)

    torch.set_default_dtype(torch.bfloat16)  # Meta's generation code builds the model in bfloat16 (reference.py)
    model = Transformer(ModelArgs(max_seq_len=len(token_ids), max_batch_size=1, **params))
    state = torch.load(ckpt_dir / f"consolidated.{rank:02d}.pth", map_location="cpu", mmap=True, weights_only=True)
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        logits = model(torch.tensor([token_ids]), start_pos=0)[0].float()
    if rank == 0:
        torch.save({"logits": logits, "token_ids": token_ids}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
