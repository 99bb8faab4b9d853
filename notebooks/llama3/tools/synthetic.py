"""Random checkpoints at any shape, in Meta's original layout (one file or model-parallel shards) or Hugging
Face's: `scripts/checkpoints/make_checkpoint.py`.

consolidated.00.pth (bfloat16, Meta's key names), params.json and the real tokenizer.model.
Matrices are N(0, 1/fan_in) so activations stay finite through any number of layers, or
N(0, weight_std^2) with `--weight-std` (trained Llama 3 8B matrices have std near 0.02); the
embedding and output matrices get standard deviation `--embedding-scale` (1.0 makes the
logits peaked, so that bfloat16 rounding cannot decide the top-1 token in a parity test;
trained embeddings are nearer 0.02).

    python scripts/checkpoints/make_checkpoint.py OUT --preset gqa2 [--seed 0]
    python scripts/checkpoints/make_checkpoint.py OUT --preset 8b --embedding-scale 0.02 --weight-std 0.02 --seed 1
    python scripts/checkpoints/make_checkpoint.py OUT --params '{"dim": 128, ...}'
    python scripts/checkpoints/make_checkpoint.py OUT --preset llama3-70b --n-layers 2 --shards 8  # 70B's widths
    python scripts/checkpoints/make_checkpoint.py OUT --from build/llama3-demo --shards 2   # any checkpoint, re-cut
    python scripts/checkpoints/make_checkpoint.py OUT --from build/llama3-demo --layout hf  # Hugging Face's layout
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import torch

import llama3
from llama3.formats import huggingface, meta

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
        LLAMA3_8B,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        multiple_of=32,
        ffn_dim_multiplier=1.5,
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


class RandomWeights(Mapping):
    """Random weights for params, made one tensor at a time, in key order, each once (as write_meta_shards
    reads them): they come from one random stream, so the same seed gives the same model in every layout."""

    def __init__(self, params: dict, seed=0, embedding_scale=1.0, tied=False, weight_std=None):
        self.shapes = llama3.expected_shapes(llama3.ModelConfig.from_params(params), tied_output=tied)
        self.keys_in_order = list(self.shapes)
        self.next = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.scales = (embedding_scale, weight_std)

    def __getitem__(self, key):
        if key not in self.shapes:
            raise KeyError(key)
        if self.keys_in_order.index(key) != self.next:
            expected = self.keys_in_order[self.next]
            raise RuntimeError(f"RandomWeights are made in key order, each once: {expected} comes next, not {key}")
        self.next += 1
        t = torch.empty(self.shapes[key], dtype=torch.bfloat16)
        fill_random(t, key, self.gen, *self.scales)
        return t

    def __contains__(self, key):  # without making the tensor
        return key in self.shapes

    def __iter__(self):
        return iter(self.keys_in_order)

    def __len__(self):
        return len(self.keys_in_order)


def write_checkpoint(
    out: Path,
    params: dict,
    seed: int = 0,
    embedding_scale: float = 1.0,
    tied: bool = False,
    progress: bool = False,
    weight_std: float | None = None,
    n_shards: int = 1,
) -> Path:
    """Random weights written in Meta's layout through the format's own writer (formats.meta.write_meta_shards:
    memory stays small even for 16 GB of weights). A tied one-file model is written without output.weight."""
    weights: Mapping = RandomWeights(params, seed, embedding_scale, tied, weight_std)
    if progress:
        weights = _Progress(weights)
    meta.write_meta_shards(
        weights, params, Path(out), n_shards, llama3.meta_tokenizer_model(), tied_output_file=n_shards > 1
    )
    return Path(out)


def random_hf_checkpoint(
    out: Path, params: dict, seed=0, embedding_scale=1.0, tied=False, weight_std=None, shard_bytes=None
) -> Path:
    """The same random weights (the same seed gives the same model) in Hugging Face's layout. Made in memory
    (16 GB at 8B): for 8B write Meta's layout first and convert it with --from and --hf-shard-bytes."""
    weights = dict(RandomWeights(params, seed, embedding_scale, tied, weight_std))
    release = llama3.release_from_params(params, None)
    return huggingface.write_hf_checkpoint(
        weights, params, release, Path(out), llama3.meta_tokenizer_model(), shard_bytes
    )


class _Progress(Mapping):
    """A progress bar over a lazy mapping's tensors as a writer asks for them."""

    def __init__(self, weights: Mapping):
        self.weights, self.bar = weights, llama3.progress_bar(range(len(weights)), total=len(weights), desc="tensors")
        self.steps = iter(self.bar)

    def __getitem__(self, key):
        next(self.steps, None)
        return self.weights[key]

    def __contains__(self, key):
        return key in self.weights

    def __iter__(self):
        return iter(self.weights)

    def __len__(self):
        return len(self.weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--preset", choices=sorted(PRESETS))
    group.add_argument("--params", help="params.json contents as JSON")
    group.add_argument(
        "--from", dest="source", type=Path, metavar="DIR",
        help="this checkpoint's weights (any layout), cut into --shards or written in --layout hf",
    )  # fmt: skip
    parser.add_argument("--shards", type=int, default=1, help="write N model-parallel files, as Meta ships 70B/405B")
    parser.add_argument("--n-layers", type=int, help="keep the preset's widths but only this many layers (a slice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-scale", type=float, default=1.0, help="std of the embedding and output matrices")
    parser.add_argument("--weight-std", type=float, help="std of the other matrices (default: 1/sqrt(fan_in))")
    parser.add_argument("--tied", action="store_true", help="omit output.weight (Llama 3.2 1B/3B)")
    parser.add_argument("--layout", choices=["meta", "hf"], default="meta", help="hf: Hugging Face's")
    parser.add_argument("--hf-shard-bytes", type=int, help="with --layout hf: safetensors files of at most N bytes")
    args = parser.parse_args()
    if args.layout == "hf" and args.shards != 1:
        parser.error("--shards cuts Meta's layout; Hugging Face's splits files by size: use --hf-shard-bytes")
    if args.n_layers is not None and (args.source or args.n_layers < 1):
        parser.error("--n-layers takes a positive count, with --preset or --params")
    try:
        if args.source is not None:
            if args.layout == "hf":
                llama3.to_hugging_face(args.source, args.out, args.hf_shard_bytes)
            else:
                llama3.reshard(args.source, args.out, args.shards)
        else:
            params = PRESETS[args.preset] if args.preset else json.loads(args.params)
            if args.n_layers is not None:
                params = dict(params, n_layers=args.n_layers)
            tied = args.tied or args.preset in TIED_PRESETS
            scales = dict(seed=args.seed, embedding_scale=args.embedding_scale, tied=tied, weight_std=args.weight_std)
            if args.layout == "hf":
                random_hf_checkpoint(args.out, params, shard_bytes=args.hf_shard_bytes, **scales)
            else:
                write_checkpoint(args.out, params, progress=True, n_shards=args.shards, **scales)
    except llama3.CheckpointError as error:
        parser.error(str(error))
    print(f"wrote {args.out}")
