"""Write a random checkpoint in Meta's original Llama 3 layout, at any shape.

consolidated.00.pth (bfloat16, Meta's key names), params.json and the real tokenizer.model.
Matrices are N(0, 1/fan_in) so activations stay finite through any number of layers, or
N(0, weight_std^2) with `--weight-std` (trained Llama 3 8B matrices have std near 0.02); the
embedding and output matrices get standard deviation `--embedding-scale` (1.0 makes the
logits peaked, so that bfloat16 rounding cannot decide the top-1 token in a parity test;
trained embeddings are nearer 0.02).

    python scripts/make_checkpoint.py OUT --preset gqa2 [--seed 0]
    python scripts/make_checkpoint.py OUT --preset 8b --embedding-scale 0.02 --weight-std 0.02 --seed 1
    python scripts/make_checkpoint.py OUT --params '{"dim": 128, ...}'
    python scripts/make_checkpoint.py OUT --preset llama3-70b --n-layers 2 --shards 8   # 70B's widths, 2 layers
"""

import argparse
import json
import mmap
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "notebooks"))
import llama3  # noqa: E402
from train_demo import reference_tokenizer_path  # noqa: E402

LLAMA3_8B = llama3.LLAMA3_8B_PARAMS

# Small shapes for parity tests: 1, 2 and 4 query heads per key/value head, other rope_theta,
# Llama 3.1's scaled RoPE, and a Llama 3.2-style tied output matrix.
PRESETS = {
    "8b": LLAMA3_8B,
    "mha": dict(LLAMA3_8B, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=32),
    "gqa2": dict(LLAMA3_8B, dim=96, n_layers=3, n_heads=6, n_kv_heads=3, multiple_of=32, rope_theta=10000.0),
    "gqa4": dict(LLAMA3_8B, dim=128, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=64),
    "llama3.1": dict(LLAMA3_8B, dim=128, n_layers=2, n_heads=4, n_kv_heads=1, multiple_of=64, use_scaled_rope=True),
    "llama3.2-tied": dict(
        LLAMA3_8B, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.5,
        use_scaled_rope=True,
    ),
}

# The family at full size (params from Meta's llama_models.sku_list, via llama3.FAMILY_PARAMS),
# for users who want a random checkpoint of a real shape: several GB each.
PRESETS |= {
    "llama3.1-8b": llama3.FAMILY_PARAMS["Llama 3.1 8B"],
    "llama3.2-1b": llama3.FAMILY_PARAMS["Llama 3.2 1B"],
    "llama3.2-3b": llama3.FAMILY_PARAMS["Llama 3.2 3B"],
    "llama3-70b": llama3.SHARDED_PARAMS["Llama 3 70B"],  # 80 layers, 141 GB: with --n-layers, a slice of it
}
# Llama 3.2 in miniature for tests: 1B has 4 query heads per key/value head and FFN multiplier
# 1.5, 3B has 3 per key/value head and multiplier 1.0; both scaled RoPE and a tied output.
PRESETS |= {
    "llama3.2-1b-mini": dict(
        llama3.FAMILY_PARAMS["Llama 3.2 1B"], dim=128, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=32
    ),
    "llama3.2-3b-mini": dict(
        llama3.FAMILY_PARAMS["Llama 3.2 3B"], dim=96, n_layers=2, n_heads=6, n_kv_heads=2, multiple_of=32
    ),
}
TIED_PRESETS = {"llama3.2-tied", "llama3.2-1b", "llama3.2-3b", "llama3.2-1b-mini", "llama3.2-3b-mini"}


CHUNK_ELEMENTS = 1 << 25  # generate 32M values at a time: bounded memory at any size


def fill_random(
    t: torch.Tensor, key: str, gen: torch.Generator, embedding_scale: float, weight_std: float | None = None
) -> None:
    """Fill a [rows, ...] tensor in place, a block of rows at a time."""
    if t.dim() == 1:  # norms: around 1
        t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
        return
    if key in ("tok_embeddings.weight", "output.weight"):
        scale = embedding_scale
    elif weight_std is not None:
        scale = weight_std
    else:
        scale = 1.0 / t.shape[1] ** 0.5  # N(0, 1/fan_in): activations stay finite through the layers
    rows = max(1, CHUNK_ELEMENTS // t.shape[1])
    for start in range(0, t.shape[0], rows):
        block = t[start : start + rows]
        block.copy_(torch.randn(block.shape, generator=gen) * scale)


def write_checkpoint(
    out: Path,
    params: dict,
    seed: int = 0,
    embedding_scale: float = 1.0,
    tied: bool = False,
    progress: bool = False,
    weight_std: float | None = None,
) -> Path:
    """Write the file's layout first with empty space for the data, then fill it through a shared mmap,
    so that memory stays small even for 16 GB of weights."""
    config = llama3.ModelConfig.from_params(params)
    shapes = llama3.expected_shapes(config, tied_output=tied)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "consolidated.00.pth.partial"  # renamed when complete
    layout = {key: torch.empty(shape, dtype=torch.bfloat16) for key, shape in shapes.items()}  # never touched
    with torch.serialization.skip_data():
        torch.save(layout, path)
    del layout
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
        weights = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    gen = torch.Generator().manual_seed(seed)
    items = list(weights.items())
    for key, tensor in llama3.progress_bar(items, total=len(items), desc="tensors") if progress else items:
        fill_random(tensor, key, gen, embedding_scale, weight_std)
    del weights
    (out / "params.json").write_text(json.dumps(params))
    shutil.copyfile(reference_tokenizer_path(), out / "tokenizer.model")
    path.rename(out / "consolidated.00.pth")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--preset", choices=sorted(PRESETS))
    group.add_argument("--params", help="params.json contents as JSON")
    group.add_argument("--from", dest="source", type=Path, metavar="DIR",
                       help="this one-file Meta checkpoint's weights, cut into --shards or written in --layout hf")
    parser.add_argument("--shards", type=int, default=1, help="write N model-parallel files, as Meta ships 70B/405B")
    parser.add_argument("--n-layers", type=int, help="keep the preset's widths but only this many layers (a slice of a big model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-scale", type=float, default=1.0, help="std of the embedding and output matrices")
    parser.add_argument("--weight-std", type=float, help="std of the other matrices (default: 1/sqrt(fan_in))")
    parser.add_argument("--tied", action="store_true", help="omit output.weight (Llama 3.2 1B/3B)")
    parser.add_argument("--layout", choices=["meta", "hf"], default="meta", help="hf: Hugging Face's (write_hf.py)")
    parser.add_argument("--hf-shard-bytes", type=int, help="with --layout hf: safetensors files of at most N bytes")
    args = parser.parse_args()
    if args.n_layers is not None:
        if args.source or args.n_layers < 1:
            parser.error("--n-layers takes a positive count, with --preset or --params")
        base = PRESETS[args.preset] if args.preset else json.loads(args.params)
        args.tied = args.tied or args.preset in TIED_PRESETS
        args.params, args.preset = json.dumps(dict(base, n_layers=args.n_layers)), None
    if args.layout == "hf":
        if args.shards != 1:
            parser.error("--shards cuts Meta's layout; Hugging Face's splits files by size: use --hf-shard-bytes")
        import write_hf

        args.from_dir = args.source
        print(f"wrote {write_hf.write_from_args(args, PRESETS, TIED_PRESETS)}")
        return
    if args.shards != 1 or args.source:
        from write_shards import CheckpointError, write_from_cli

        try:
            write_from_cli(args)
        except CheckpointError as e:
            parser.error(str(e))
        print(f"wrote {args.out}")
        return
    params = PRESETS[args.preset] if args.preset else json.loads(args.params)
    tied = args.tied or args.preset in TIED_PRESETS
    write_checkpoint(args.out, params, args.seed, args.embedding_scale, tied, progress=True, weight_std=args.weight_std)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
