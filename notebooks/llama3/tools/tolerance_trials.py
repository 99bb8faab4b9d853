"""How far apart bfloat16 rounding puts logits that should agree, on random checkpoints of 8B's shape.

For each (embedding std, weight std, seed) this writes a random checkpoint in Meta's format (all
32 layers, 16 GB; one at a time, deleted after use), runs the default prompt, and compares:

- cache: each step of greedy generation with the key/value cache (llama3.generate, use_cache=True)
  against a forward pass over the whole sequence so far, as notebook 12 does;
- meta: ours against Meta's reference Transformer on the same file (llama3.meta_reference_logits);
- per-head: the module's forward against the usual per-head derivation (every head's q, k and v
  from its own slice of the weights, in a Python loop: llama3.tools.bench's naive_forward).

Per comparison: the largest |difference| of the logits, the same over the largest |logit| and over
the logits' standard deviation (each row's, the largest ratio over rows), the largest difference of
log-softmax, and whether the top-1 tokens agree (where they do not, how far below the reference's top
the chosen token's reference logit lies). The default synthetic checkpoint (`make synthetic-8b`) is
measured too if it exists.

    python scripts/bench/tolerance_trials.py [--steps 4] [--trials 1.0,0.05,0 0.02,0.02,1 ...]

Writes build/tolerance-trials.json and build/tolerance-trials.md.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import llama3
from llama3.tools.bench import naive_forward
from llama3.tools.synthetic import write_checkpoint

BUILD = llama3.REPO_DIR / "build"
DEFAULT_TRIALS = ["1.0,0.05,0", "0.02,0.02,1", "1.0,0.02,2", "0.02,0.05,3"]


def differences(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """got and ref: float32 logits [rows, V] that should agree."""
    got, ref = got.float().reshape(-1, got.shape[-1]), ref.float().reshape(-1, ref.shape[-1])
    diff = (got - ref).abs().amax(dim=-1)  # per row
    log_softmax = (torch.log_softmax(got, -1) - torch.log_softmax(ref, -1)).abs().amax(dim=-1)
    chosen = got.argmax(-1)
    gaps = ref.amax(-1) - ref.gather(-1, chosen[:, None])[:, 0]  # 0 where the top-1 agrees
    differing = (chosen != ref.argmax(-1)).nonzero().flatten().tolist()
    return {
        "rows": ref.shape[0],
        "max_abs": diff.max().item(),
        "max_abs_logit": ref.abs().max().item(),
        "rel_max_logit": (diff / ref.abs().amax(-1)).max().item(),
        "rel_std": (diff / ref.std(-1)).max().item(),
        "log_softmax": log_softmax.max().item(),
        "top1_same": ref.shape[0] - len(differing),
        "top1_worst_gap": gaps.max().item(),  # reference's top minus its logit for our top-1
        "top1_gap_over_diff": max((gaps[i] / diff[i]).item() for i in differing) if differing else 0.0,
    }


def measure(model_dir: Path, steps: int) -> dict:
    """The three comparisons on one checkpoint (run in a fresh process)."""
    ck = llama3.load_checkpoint(model_dir, device="cpu")
    token_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    started = time.perf_counter()
    ours = llama3.forward(ck.weights, ck.config, token_ids)
    with torch.inference_mode():
        per_head = naive_forward(ck.weights, ck.config, token_ids)
    meta = llama3.meta_reference_logits(ck, token_ids)
    generation = llama3.generate(ck.weights, ck.config, token_ids, steps, use_cache=True)
    cached = torch.stack(generation.step_logits)
    uncached = torch.stack(
        [
            llama3.forward(ck.weights, ck.config, token_ids + generation.token_ids[:step], last_only=True)[-1]
            for step in range(len(generation.step_logits))
        ]
    )
    return {
        "tokens": len(token_ids),
        "generated": generation.token_ids,
        "seconds": time.perf_counter() - started,
        "logit_std": ours[-1].std().item(),
        "cache": differences(cached, uncached),
        "meta": differences(ours, meta),
        "per_head": differences(per_head, ours),
    }


def in_subprocess(model_dir: Path, steps: int) -> dict:
    command = [sys.executable, "-m", __spec__.name, "--measure", str(model_dir), "--steps", str(steps)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| checkpoint: embedding std, weight std, seed | comparison | max abs diff | / max abs logit | / std(logits) "
        "| log-softmax | top-1 same | worst top-1 gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"cache": "cached vs uncached", "meta": "ours vs Meta", "per_head": "per-head chain vs forward"}
    for r in results:
        for key, name in names.items():
            d = r[key]
            lines.append(
                f"| {r['label']} | {name} | {d['max_abs']:.3g} | {100 * d['rel_max_logit']:.2f}% | {d['rel_std']:.3f} "
                f"| {d['log_softmax']:.3g} | {d['top1_same']}/{d['rows']} | {d['top1_worst_gap']:.3g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="generated tokens compared, cached vs uncached")
    parser.add_argument("--trials", nargs="*", default=DEFAULT_TRIALS, help="embedding_std,weight_std,seed ...")
    parser.add_argument("--workdir", type=Path, default=BUILD / "tolerance-8b", help="where each checkpoint is written")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.steps)))
        return

    results = []
    default = BUILD / "llama3-8b-synthetic"
    if (default / "consolidated.00.pth").exists():
        print(f"measuring {default} ...", flush=True)
        results.append({"label": "1.0, 1/sqrt(fan_in), 0 (make synthetic-8b)", **in_subprocess(default, args.steps)})
    for trial in args.trials:
        embedding_std, weight_std, seed = trial.split(",")
        label = f"{float(embedding_std)}, {float(weight_std)}, {int(seed)}"
        print(f"writing and measuring {label} ...", flush=True)
        try:
            write_checkpoint(args.workdir, llama3.LLAMA3_8B_PARAMS, int(seed), float(embedding_std),
                             weight_std=float(weight_std))  # fmt: skip
            results.append({"label": label, **in_subprocess(args.workdir, args.steps)})
        finally:
            shutil.rmtree(args.workdir, ignore_errors=True)  # 16 GB
        print(table(results[-1:]), flush=True)
    text = table(results)
    print("\n" + text)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "tolerance-trials.md").write_text(text + "\n")
    (BUILD / "tolerance-trials.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
