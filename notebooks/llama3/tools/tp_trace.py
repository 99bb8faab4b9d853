"""One forward pass tensor-parallel, with each rank's share of it saved (notebook 18 launches this).

Run by torchrun, one process per shard of the checkpoint in the folder given: each rank maps only its own
consolidated.0r.pth (llama3.load_rank_shard), runs layer 0 step by step around its two all_reduces, checks
that equal to llama3.tp_transformer_layer, runs the whole tp_forward, and saves to OUT/rank{r}.pt what it
held and computed: its slices' shapes, the shard files it has mapped (from /proc/self/maps), its embedding
rows before and after the all_reduce, its partial sums after wo and w2 and their sums, its slice of the
logits and the gathered logits.

    torchrun --standalone --nproc-per-node 2 -m llama3.tools.tp_trace build/llama3-demo-2-shards OUT
"""

import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import llama3


def mapped_shard_files() -> list[str]:
    """The consolidated.NN.pth files this process has mapped into memory."""
    return sorted({Path(line.split()[-1]).name for line in open("/proc/self/maps")
                   if re.search(r"consolidated\.\d\d\.pth$", line.strip())})  # fmt: skip


def main(ckpt_dir: Path, out_dir: Path) -> None:
    rank, world_size, _ = llama3.init_tensor_parallel()
    config = llama3.read_params(ckpt_dir)
    shard = llama3.load_rank_shard(ckpt_dir, config, rank, world_size)
    tokenizer = llama3.load_tokenizer(ckpt_dir / "tokenizer.model", config.release)
    token_ids = llama3.encode_prompt(tokenizer, llama3.prompt_text(), config)

    with torch.inference_mode():
        here = torch.tensor([shard.vocab_start <= i < shard.vocab_end for i in token_ids])
        embedding_rows = llama3.embed(
            shard.weights["tok_embeddings.weight"], torch.where(here, torch.tensor(token_ids) - shard.vocab_start, 0)
        )
        embedding_rows = embedding_rows.masked_fill(~here[:, None], 0)  # this rank's rows, zeros for the others'
        x = llama3.vocab_parallel_embed(shard, token_ids)  # the all_reduce of every rank's rows

        freqs_cis = llama3.rope_freqs_cis(config, len(token_ids))
        lw = llama3.layer_weights(shard.weights, 0)
        attention_partial = llama3.attention(
            llama3.rms_norm(x, lw.attention_norm, config.norm_eps), lw, shard.heads_config, freqs_cis
        )  # this rank's heads, through its wo columns
        attention_sum = llama3.all_reduce_partial_sums(attention_partial)
        h = x + attention_sum
        ffn_partial = llama3.feed_forward(llama3.rms_norm(h, lw.ffn_norm, config.norm_eps), lw)
        ffn_sum = llama3.all_reduce_partial_sums(ffn_partial)
        layer0_out = h + ffn_sum
        assert torch.equal(layer0_out, llama3.tp_transformer_layer(x, shard, 0, freqs_cis))

        logits = llama3.tp_forward(shard, token_ids)

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({
        "rank": rank, "world_size": world_size, "token_ids": token_ids, "mapped": mapped_shard_files(),
        "shapes": {key: list(t.shape) for key, t in shard.weights.items() if key.startswith("layers.0.") or "." not in key.removesuffix(".weight")},
        "heads": (rank * shard.heads_config.n_heads, (rank + 1) * shard.heads_config.n_heads),
        "kv_heads": (rank * shard.heads_config.n_kv_heads, (rank + 1) * shard.heads_config.n_kv_heads),
        "vocab": (shard.vocab_start, shard.vocab_end),
        "embedding_rows": embedding_rows, "x": x, "attention_partial": attention_partial, "attention_sum": attention_sum,
        "ffn_partial": ffn_partial, "ffn_sum": ffn_sum, "layer0_out": layer0_out,
        "logits": logits,
    }, out_dir / f"rank{rank}.pt")  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
