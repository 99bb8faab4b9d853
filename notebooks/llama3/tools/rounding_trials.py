"""How far apart rounding puts two correct computations of the same logits, on random weights.

For each embedding scale, weight scale and seed it builds a random Llama 3 in memory (8B's head
size, `--dim` wide, `--layers` deep) and compares the last logits of the 17-token prompt:
cached (prefill of 4 tokens, then one at a time) against uncached, ours against Meta's reference
Transformer, and bfloat16 against float32 weights. Each difference is printed relative to the
largest |logit| and as a fraction of llama3.logits_tolerance(config), one JSON line per trial.
notebooks/12_kv_cache_generation.ipynb quotes its results.

    python scripts/bench/rounding_trials.py --layers 8 --dim 4096 --seeds 0 1
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import llama3
from llama3.tools.synthetic import RandomWeights


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| per position over the largest |b| there, the worst position."""
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def random_weights(params, embedding_std, weight_std, seed):
    """The random weights synthetic.write_checkpoint writes, in memory instead of a file."""
    return dict(RandomWeights(params, seed, embedding_std, weight_std=weight_std))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=4096, help="a multiple of 128 (8B's head_dim)")
    parser.add_argument("--vocab", type=int, default=32000, help="smaller than 128256 to save memory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--embedding-stds", type=float, nargs="+", default=[1.0, 0.02])
    parser.add_argument(
        "--weight-stds",
        nargs="+",
        default=["0.05", "0.02", "fan_in"],
        help="std of the matrices; fan_in means 1/sqrt(fan_in)",
    )
    parser.add_argument("--no-float32", action="store_true", help="skip the float32 run (it needs 3x the memory)")
    args = parser.parse_args()

    n_heads = args.dim // 128
    params = dict(
        llama3.LLAMA3_8B_PARAMS,
        dim=args.dim,
        n_layers=args.layers,
        n_heads=n_heads,
        n_kv_heads=max(1, n_heads // 4),
        vocab_size=args.vocab,
    )
    config = llama3.ModelConfig.from_params(params)
    tokenizer = llama3.load_tokenizer(llama3.DEMO_DIR / "tokenizer.model")
    token_ids = [t % args.vocab for t in llama3.encode_prompt(tokenizer, llama3.DEFAULT_PROMPT, llama3.LLAMA3_8B)]
    params_dir = Path(tempfile.mkdtemp())
    (params_dir / "params.json").write_text(json.dumps(params))
    tolerance = llama3.logits_tolerance(config)

    for embedding_std in args.embedding_stds:
        for weight_std_arg in args.weight_stds:
            weight_std = None if weight_std_arg == "fan_in" else float(weight_std_arg)
            for seed in args.seeds:
                started = time.time()
                weights = random_weights(params, embedding_std, weight_std, seed)
                full = llama3.forward(weights, config, token_ids)
                cache = llama3.KVCache(config.n_layers)
                parts = [llama3.forward(weights, config, token_ids[:4], cache=cache)]
                parts += [llama3.forward(weights, config, [t], cache=cache) for t in token_ids[4:]]
                cached = torch.cat(parts)
                ck = llama3.Checkpoint(params_dir, config, weights, tokenizer)
                meta = llama3.meta_reference_logits(ck, token_ids)
                result = {
                    "layers": args.layers, "dim": args.dim, "embedding_std": embedding_std,
                    "weight_std": weight_std_arg, "seed": seed, "tolerance": round(tolerance, 5),
                    "cache": relative(cached, full), "cache_of_tolerance": relative(cached, full) / tolerance,
                    "cache_same_top1": bool(torch.equal(cached.argmax(-1), full.argmax(-1))),
                    "meta": relative(full, meta), "meta_bit_equal": bool(torch.equal(full, meta)),
                }  # fmt: skip
                if not args.no_float32:
                    float32 = llama3.forward({k: v.float() for k, v in weights.items()}, config, token_ids)
                    result["bfloat16_vs_float32"] = relative(full, float32)
                result["seconds"] = round(time.time() - started, 1)
                print(json.dumps(result), flush=True)
                del weights, ck


if __name__ == "__main__":
    main()
