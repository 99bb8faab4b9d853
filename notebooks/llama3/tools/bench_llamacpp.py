"""This project's prefill and decode beside llama.cpp's, on the same weights and tokens (`make bench-llamacpp`).

llama.cpp comes from PyPI as llama-cpp-python (the version pinned in scripts/bench/requirements-llamacpp.txt, compiled
from its source distribution for this CPU by the Makefile). The weights are the synthetic 8B checkpoint:
written in Hugging Face's layout by scripts/checkpoints/make_checkpoint.py, converted to a bfloat16 GGUF file by
llama.cpp's own convert_hf_to_gguf.py from that source distribution, and the Hugging Face copy deleted
again (16 GB). Both programs get the same token ids (the project's tokenizer on the default prompt, with
<|begin_of_text|>), so nothing differs but the engine.

Each engine runs in a fresh process, the two alternating for --rounds rounds (the two files do not
both fit in the page cache of a 24 GiB machine, so each process first reads its file, untimed). In each:
one untimed prefill, then PREFILL_RUNS timed ones (the prompt into an empty key/value cache, logits of
the last position only: the step generation starts with), then DECODE_STEPS timed decode steps (one
token each, greedy) after one untimed step. Prefill is the median of its runs, decode the median of its
steps; the table gives the median over rounds and the range. The top-5 next tokens after the prompt must
be the same ids in the same order; with random weights two of them can be close enough for bfloat16
rounding in a different summation order to swap them, so the logits' largest difference is printed too.

    python scripts/bench/bench_llamacpp.py --model-dir build/llama3-8b-synthetic --converter .../convert_hf_to_gguf.py

Writes build/bench-llamacpp.md and build/bench-llamacpp.json.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llama3
from llama3 import kernel as matmul_kernel
from llama3.tools import bench  # the same measures as `make bench`: bandwidth, bytes read, machine

BUILD = llama3.REPO_DIR / "build"
PREFILL_RUNS = 5
DECODE_STEPS = 16


def prompt_ids(model_dir: Path) -> list[int]:
    config = llama3.read_params(model_dir)
    return llama3.encode_prompt(llama3.load_tokenizer(model_dir / "tokenizer.model"), llama3.DEFAULT_PROMPT, config)


def run_ours(model_dir: Path, ids: list[int]) -> dict:
    ck = llama3.load_checkpoint(model_dir, device="cpu")  # memory-mapped, pages mapped up front

    def prefill():
        cache = llama3.KVCache(ck.config.n_layers)
        return cache, llama3.forward(ck.weights, ck.config, ids, cache=cache, last_only=True)[-1]

    def step(cache, token):
        return llama3.forward(ck.weights, ck.config, [token], cache=cache, last_only=True)[-1]

    return timed(prefill, step, lambda logits: logits.float().numpy())


def run_llamacpp(gguf: Path, ids: list[int]) -> dict:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_batch=len(ids), n_threads=os.cpu_count(),
                          n_threads_batch=os.cpu_count(), verbose=False)  # fmt: skip
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()

    def prefill():
        llm.reset()  # the next eval drops the whole key/value cache
        llm.eval(ids)
        return None, last_logits()

    def step(_, token):
        llm.eval([token])
        return last_logits()

    result = timed(prefill, step, lambda logits: logits)
    result["llama_cpp_version"] = llama_cpp.__version__
    result["system_info"] = llama_cpp.llama_print_system_info().decode()
    return result


def timed(prefill, step, as_numpy) -> dict:
    prefill()  # untimed: first use of every page and of every code path
    prefill_seconds = []
    for _ in range(PREFILL_RUNS):
        started = time.perf_counter()
        cache, logits = prefill()
        prefill_seconds.append(time.perf_counter() - started)
    logits = as_numpy(logits)
    top5 = [int(i) for i in (-logits).argsort(kind="stable")[:5]]
    token, step_seconds, tokens = top5[0], [], []
    for i in range(1 + DECODE_STEPS):
        started = time.perf_counter()
        out = as_numpy(step(cache, token))
        if i > 0:
            step_seconds.append(time.perf_counter() - started)
        token = int(out.argmax())
        tokens.append(token)
    return {"prefill_runs": prefill_seconds, "prefill_seconds": statistics.median(prefill_seconds),
            "decode_steps": step_seconds, "decode_seconds": statistics.median(step_seconds), "top5": top5,
            "logits": [float(v) for v in logits], "tokens": tokens}  # fmt: skip


def write_gguf(model_dir: Path, gguf: Path, converter: Path) -> None:
    """The checkpoint in Hugging Face's layout, converted by llama.cpp's own converter, then deleted."""
    hf_dir = gguf.with_suffix(".hf")
    if not (hf_dir / "config.json").exists():
        subprocess.run([sys.executable, str(llama3.REPO_DIR / "scripts" / "checkpoints" / "make_checkpoint.py"), str(hf_dir), "--from", str(model_dir),
                        "--layout", "hf"], check=True)  # fmt: skip
    tmp = gguf.with_suffix(".gguf.part")
    subprocess.run(
        [sys.executable, str(converter), str(hf_dir), "--outtype", "bf16", "--outfile", str(tmp)], check=True
    )
    tmp.rename(gguf)
    shutil.rmtree(hf_dir)


def in_subprocess(engine: str, path: Path, ids: list[int], weights_file: Path) -> dict:
    bench.read_whole_file(weights_file)  # into the page cache, untimed (the other engine's file may have pushed it out)
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--engine", engine, "--path", str(path), "--ids", json.dumps(ids)],
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"{engine} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=BUILD / "llama3-8b-synthetic")
    parser.add_argument("--gguf", type=Path, help="default: <model-dir>.bf16.gguf")
    parser.add_argument("--converter", type=Path, help="llama.cpp's convert_hf_to_gguf.py (to write the GGUF file)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", choices=["ours", "llamacpp"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        ids = json.loads(args.ids)
        result = run_ours(args.path, ids) if args.engine == "ours" else run_llamacpp(args.path, ids)
        if args.engine == "ours":
            result["bandwidth_gb_per_s"] = bench.memory_bandwidth()[0] / 1e9
            result["matmul"] = matmul_kernel.backend()
        print(json.dumps(result))
        return

    try:
        llama3.check_checkpoint_dir(args.model_dir)
    except llama3.CheckpointError as e:
        sys.exit(f"error: {e}\nBuild the synthetic 8B checkpoint with `make synthetic-8b`.")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit(
            "error: llama_cpp is not installed in this Python. `make bench-llamacpp` builds it (llama-cpp-python)."
        )
    gguf = args.gguf or args.model_dir.with_name(args.model_dir.name + ".bf16.gguf")
    if not gguf.exists():
        if args.converter is None or not args.converter.exists():
            sys.exit(
                f"error: {gguf} does not exist, and no converter was given: pass --converter with the path of "
                f"convert_hf_to_gguf.py from llama-cpp-python's source distribution (`make bench-llamacpp` does)."
            )
        write_gguf(args.model_dir, gguf, args.converter)
    ids = prompt_ids(args.model_dir)
    pth = args.model_dir / "consolidated.00.pth"
    print(f"{len(ids)} prompt tokens; {args.rounds} rounds, each engine in a fresh process ...", flush=True)
    rounds = []
    for r in range(args.rounds):
        pair = {}
        engines = [("llamacpp", gguf, gguf), ("ours", args.model_dir, pth)]
        for engine, path, weights_file in engines if r % 2 == 0 else engines[::-1]:
            pair[engine] = in_subprocess(engine, path, ids, weights_file)
            print(
                f"round {r + 1}, {engine}: prefill {pair[engine]['prefill_seconds']:.3f} s, "
                f"decode {pair[engine]['decode_seconds']:.3f} s / token",
                flush=True,
            )
        rounds.append(pair)
    report(args, gguf, ids, rounds)


def report(args, gguf: Path, ids: list[int], rounds: list[dict]) -> None:
    config = llama3.read_params(args.model_dir)
    weights = llama3.load_weights(args.model_dir, config)
    bandwidth = max(p["ours"]["bandwidth_gb_per_s"] for p in rounds) * 1e9
    decode_floor = bench.weight_bytes_read(weights, 1) / bandwidth
    prefill_floor = bench.weight_bytes_read(weights, len(ids)) / bandwidth
    ours, theirs = [p["ours"] for p in rounds], [p["llamacpp"] for p in rounds]
    same_top5 = [p["ours"]["top5"] == p["llamacpp"]["top5"] for p in rounds]
    import numpy as np

    diff = max(float(np.abs(np.array(p["ours"]["logits"]) - np.array(p["llamacpp"]["logits"])).max()) for p in rounds)
    spread_of_logits = float(np.ptp(np.array(ours[0]["logits"])))
    same_set = all(sorted(p["ours"]["top5"]) == sorted(p["llamacpp"]["top5"]) for p in rounds)

    def top5_logits(r):
        return ", ".join(f"{i}: {r['logits'][i]:.2f}" for i in r["top5"])

    # Where the orders differ, are the tokens closer in both programs' logits than the programs are to each other?
    ties = any(
        p["ours"]["logits"][a] == p["ours"]["logits"][b]
        for p in rounds
        for a, b in zip(p["ours"]["top5"], p["llamacpp"]["top5"])
        if a != b
    )
    swaps_within_noise = all(
        abs(p["ours"]["logits"][a] - p["ours"]["logits"][b]) <= diff
        and abs(p["llamacpp"]["logits"][a] - p["llamacpp"]["logits"][b]) <= diff
        for p in rounds
        for a, b in zip(p["ours"]["top5"], p["llamacpp"]["top5"])
        if a != b
    )
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    load = os.getloadavg()
    lines = [
        f"Machine: {bench.machine_description()}. Weight matmuls here: {ours[0]['matmul']}. "
        f"llama.cpp: llama-cpp-python {theirs[0]['llama_cpp_version']}, {theirs[0]['system_info'].strip()}. "
        f"Load average (1, 5, 15 min) at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
        "",
        f"Same weights (synthetic 8B; llama.cpp's bf16 GGUF {gguf.stat().st_size / 1e9:.1f} GB written by its own "
        f"converter), the same {len(ids)} prompt token ids, {os.cpu_count()} threads each, warm page cache, "
        f"{len(rounds)} rounds alternating, each engine in a fresh process. Prefill: the prompt into an empty "
        f"key/value cache, last position's logits (median of {PREFILL_RUNS}); decode: one token (median of "
        f"{DECODE_STEPS} steps). Medians over rounds, range in brackets. Floors: reading the weights once at "
        f"{bandwidth / 1e9:.1f} GB/s (`make bench`'s measure, best of the rounds).",
        "",
        "| measure | llama.cpp bf16 | this project | project / llama.cpp | floor |",
        "|---|---|---|---|---|",
        f"| prefill, {len(ids)}-token prompt, s | {spread([r['prefill_seconds'] for r in theirs])} | "
        f"{spread([r['prefill_seconds'] for r in ours])} | {med(ours, 'prefill_seconds') / med(theirs, 'prefill_seconds'):.2f} | "
        f"{prefill_floor:.3f} |",
        f"| decode, s / token | {spread([r['decode_seconds'] for r in theirs])} | {spread([r['decode_seconds'] for r in ours])} | "
        f"{med(ours, 'decode_seconds') / med(theirs, 'decode_seconds'):.2f} | {decode_floor:.3f} |",
        f"| decode, share of the floor | {100 * decode_floor / med(theirs, 'decode_seconds'):.0f}% | "
        f"{100 * decode_floor / med(ours, 'decode_seconds'):.0f}% | | 100% |",
        f"| top-5 next tokens (ids) | {', '.join(map(str, theirs[0]['top5']))} | {', '.join(map(str, ours[0]['top5']))} | "
        f"same order in {sum(same_top5)} of {len(rounds)} rounds; same five: {'yes' if same_set else 'no'} | |",
        "",
        f"Top-5 logits, llama.cpp: {top5_logits(theirs[0])}; this project: {top5_logits(ours[0])}. "
        f"Largest difference between the two programs' logits after the prompt: {diff:.3f}, against a spread of "
        f"{spread_of_logits:.1f} between the lowest and highest logit (llama.cpp keeps activations in float32 between "
        f"its operations, this project in bfloat16 as Meta's code does). "
        + (
            ""
            if all(same_top5)
            else "Where the orders differ, the two tokens' logits are closer to each other, in both programs, than the "
            "programs' logits are to each other: their order is within the two programs' rounding"
            + (
                " (in this project's bfloat16 logits the two are tied exactly, and equal logits are ordered by token id)"
                if ties
                else ""
            )
            + ". "
            if swaps_within_noise
            else "Where the orders differ, the tokens' logits are further apart than the two programs' largest "
            "difference: a real disagreement. "
        )
        + f"Greedy tokens decoded, llama.cpp: {theirs[0]['tokens']}; this project: {ours[0]['tokens']}.",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "bench-llamacpp.md").write_text(table + "\n")
    for r in ours + theirs:
        r.pop("logits")
    (BUILD / "bench-llamacpp.json").write_text(json.dumps({"rounds": rounds, "bandwidth_gb_per_s": bandwidth / 1e9,
                                                           "decode_floor_seconds": decode_floor,
                                                           "prefill_floor_seconds": prefill_floor, "top5_logits_max_diff": diff},
                                                          indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
