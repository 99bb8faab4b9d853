"""Benchmark: the walkthrough's path at full size against the usual approach and the machine's floor.

Each approach runs in a fresh process so that its peak memory is its own:
- ours (warm / cold page cache): load_checkpoint (memory-mapped) + the forward pass that
  notebook 09 runs, through the module's functions; once more with LLAMA3_MATMUL=torch, to
  show what the bf16 kernel (llama3/kernel.py) adds;
- baseline: the way the usual from-scratch notebooks do it, written for this benchmark:
  the whole checkpoint torch.load-ed into RAM, then per-head Python loops;
- decode: generating with the key/value cache, one token per forward pass (the step
  llama3.generate(..., use_cache=True) takes), in seconds per token;
- floors: a forward pass over T tokens must do 2 * (parameters multiplied) * T flops and read every weight
  it multiplies by once (all but the embedding table, of which it reads T rows). So its floor
  is the larger of the compute time, at the best bfloat16 matmul rate torch reaches here (over
  the shapes the model uses and a large square one), and the time to read those weights once
  at the memory bandwidth, measured here with all cores reading a buffer far larger than the
  caches. At 17 tokens either may bind; a decode step (T = 1) is bound by the read. Also the
  disk's read throughput for the checkpoint file.

    python scripts/bench/bench.py [--model-dir build/llama3-8b-synthetic]

Prints a markdown table and writes build/bench.json and build/bench.md.

With --sizes DIR [DIR ...] (`make bench-sizes`: Llama 3.2 1B, 3.2 3B and 3 8B) it measures instead
what each checkpoint needs, each in a fresh process with the file read into the page cache first:
its size on disk; the RAM for a smooth run, which is the weights mapped (the growth of the process's
file-backed resident memory, RssFile, once every weight has been used) plus the peak anonymous memory
(RssAnon: the interpreter, torch, activations, the key/value cache) over a forward pass and a
generation; the seconds of a forward pass over the 17-token prompt (median of FORWARD_RUNS, after one
untimed pass that maps the pages); and the seconds per token generating with the key/value cache
(median of DECODE_STEPS). Writes build/sizes.md and build/sizes.json.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

import llama3
from llama3 import kernel as matmul_kernel

BUILD = llama3.REPO_DIR / "build"


# --- measuring ---------------------------------------------------------------------------


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak anonymous memory by polling (Linux keeps no high-water mark for it); peak total from VmHWM."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_anon_kb, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak_anon_kb = max(self.peak_anon_kb, status_kb("RssAnon"))
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_anon_kb = max(self.peak_anon_kb, status_kb("RssAnon"))
        self.peak_total_kb = status_kb("VmHWM")


def disk_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def evict_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_whole_file(path: Path) -> float:
    """Seconds to read the file sequentially."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(64 << 20)
        while f.readinto(buffer):
            pass
    return time.perf_counter() - started


# --- the approaches (each runs in its own process) -----------------------------------------


def measure(load, forward) -> dict:
    """Wall time of load() then forward(*loaded), peak memory, and the top-1 token."""
    read_before = disk_read_bytes()
    with PeakMemory() as memory:
        started = time.perf_counter()
        loaded = load()
        forward_started = time.perf_counter()
        logits = forward(*loaded)
        ended = time.perf_counter()
    return {
        "seconds": ended - started,
        "forward_seconds": ended - forward_started,
        "peak_anon_gb": memory.peak_anon_kb / 2**20,
        "peak_total_gb": memory.peak_total_kb / 2**20,
        "disk_read_gb": (disk_read_bytes() - read_before) / 2**30,
        "top1": int(logits[-1].argmax()),
    }


def run_ours(model_dir: Path) -> dict:
    def load():
        ck = llama3.load_checkpoint(model_dir, device="cpu")  # memory-mapped
        return ck.weights, ck.config, llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)

    return measure(load, llama3.forward)


def naive_forward(weights: dict, config: llama3.ModelConfig, token_ids: list[int]) -> torch.Tensor:
    """The usual notebook's forward: every head in a Python loop, weights sliced per head."""
    n = len(token_ids)
    x = weights["tok_embeddings.weight"][torch.tensor(token_ids)]
    freqs_cis = llama3.rope_freqs_cis(config, n)
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    for layer in range(config.n_layers):
        p = f"layers.{layer}."
        x_normed = llama3.rms_norm(x, weights[p + "attention_norm.weight"], config.norm_eps)
        wq = weights[p + "attention.wq.weight"].view(config.n_heads, config.head_dim, config.dim)
        wk = weights[p + "attention.wk.weight"].view(config.n_kv_heads, config.head_dim, config.dim)
        wv = weights[p + "attention.wv.weight"].view(config.n_kv_heads, config.head_dim, config.dim)
        head_outputs = []
        for head in range(config.n_heads):
            kv_head = head // config.queries_per_kv_head
            q = llama3.apply_rope(x_normed @ wq[head].T, freqs_cis)
            k = llama3.apply_rope(x_normed @ wk[kv_head].T, freqs_cis)
            v = x_normed @ wv[kv_head].T
            scores = (q @ k.T).float() / config.head_dim**0.5 + mask
            head_outputs.append(torch.softmax(scores, dim=-1).to(v.dtype) @ v)
        x = x + torch.cat(head_outputs, dim=-1) @ weights[p + "attention.wo.weight"].T
        h = llama3.rms_norm(x, weights[p + "ffn_norm.weight"], config.norm_eps)
        gate = torch.nn.functional.silu(h @ weights[p + "feed_forward.w1.weight"].T)
        x = x + (gate * (h @ weights[p + "feed_forward.w3.weight"].T)) @ weights[p + "feed_forward.w2.weight"].T
    return llama3.output_logits(x, weights, config)


def run_baseline(model_dir: Path) -> dict:
    def load():
        config = llama3.read_params(model_dir)
        weights = torch.load(model_dir / "consolidated.00.pth", map_location="cpu", weights_only=True)  # all in RAM
        tokenizer = llama3.load_tokenizer(model_dir / "tokenizer.model")
        return weights, config, llama3.encode_prompt(tokenizer, llama3.DEFAULT_PROMPT, config)

    return measure(load, naive_forward)


DECODE_STEPS = 10  # timed decode steps, after one untimed step (the kernel checks its new shapes then)
BANDWIDTH_BUFFER = 4 << 30  # bytes: far larger than any cache (the largest L3 here is 480 MiB)


def run_decode(model_dir: Path) -> dict:
    """Seconds per token generating with the key/value cache, after the prompt: llama3.generate's step."""
    bandwidth, _ = memory_bandwidth()  # here too: the floor is only as good as the best measurement
    ck = llama3.load_checkpoint(model_dir, device="cpu")
    prompt_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    cache = llama3.KVCache(ck.config.n_layers)
    token = int(llama3.forward(ck.weights, ck.config, prompt_ids, cache=cache, last_only=True)[-1].argmax())
    step_seconds, tokens = [], []
    for step in range(1 + DECODE_STEPS):
        started = time.perf_counter()
        logits = llama3.forward(ck.weights, ck.config, [token], cache=cache, last_only=True)
        if step > 0:
            step_seconds.append(time.perf_counter() - started)
        token = int(logits[-1].argmax())
        tokens.append(token)
    ordered = sorted(step_seconds)
    return {"step_seconds": step_seconds, "median_seconds": ordered[len(ordered) // 2], "tokens": tokens,
            "forward_seconds": ordered[len(ordered) // 2], "bandwidth_gb_per_s": bandwidth / 1e9}  # fmt: skip


def memory_bandwidth(seconds: float = 2.0) -> tuple[float, str]:
    """Bytes per second all cores read from a buffer far larger than the caches (best pass)."""
    buffer = torch.ones(BANDWIDTH_BUFFER // 8, dtype=torch.int64)  # written: every page is real memory
    if matmul_kernel.available():
        read, how = matmul_kernel.read_all, f"AVX-512 loads on {torch.get_num_threads()} threads"
    else:
        read, how = torch.sum, f"torch.sum over int64 on {torch.get_num_threads()} threads"
    read(buffer)
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        read(buffer)
        best = min(best, time.perf_counter() - t)
    return BANDWIDTH_BUFFER / best, f"{BANDWIDTH_BUFFER >> 30} GiB buffer, {how}"


def weight_bytes_read(weights: dict[str, torch.Tensor], tokens: int) -> int:
    """Bytes of weights a forward pass over `tokens` new tokens reads: every matrix and norm once,
    and only the tokens' rows of the embedding table (unless it is also the output matrix)."""
    tied, total = llama3.output_is_tied(weights), 0
    for key, t in weights.items():
        if key == "output.weight" and tied:
            continue  # the embedding table itself, counted whole under its own key
        if key == "tok_embeddings.weight" and not tied:
            total += tokens * t.shape[1] * t.element_size()
        else:
            total += t.numel() * t.element_size()
    return total


def multiplied_parameters(weights: dict[str, torch.Tensor]) -> int:
    """Parameters each token is multiplied by: every matrix but an untied embedding table (a lookup)."""
    tied = llama3.output_is_tied(weights)
    return sum(t.numel() for k, t in weights.items() if t.dim() == 2 and (tied or k != "tok_embeddings.weight"))


def matmul_rate(m: int, k: int, n: int, matmul=lambda a, b: a @ b.T, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
    matmul(a, b)  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        matmul(a, b)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - started)


def run_floor(model_dir: Path) -> dict:
    config = llama3.read_params(model_dir)
    tokens = len(
        llama3.encode_prompt(llama3.load_tokenizer(model_dir / "tokenizer.model"), llama3.DEFAULT_PROMPT, config)
    )
    D, F, kv = config.dim, config.ffn_hidden_dim, config.n_kv_heads * config.head_dim
    V = config.vocab_size
    shapes = {"square 4096": (4096, 4096, 4096), "wq/wo": (tokens, D, D), "wk/wv": (tokens, D, kv),
              "w1/w3": (tokens, D, F), "w2": (tokens, F, D), "output": (tokens, D, V)}  # fmt: skip
    rates = {name: matmul_rate(*shape) for name, shape in shapes.items()}  # torch's
    kernel_rates = {}
    if matmul_kernel.available():
        kernel_rates = {
            name: matmul_rate(*shape, matmul=llama3.linear) for name, shape in shapes.items() if name != "square 4096"
        }
    # The forward pass's matmuls, each at the rate torch reaches for its own shape.
    per_layer = {"wq/wo": 2, "wk/wv": 2, "w1/w3": 2, "w2": 1}
    matmul_seconds = (
        sum(config.n_layers * count * 2 * math.prod(shapes[name]) / rates[name] for name, count in per_layer.items())
        + 2 * math.prod(shapes["output"]) / rates["output"]
    )
    path = model_dir / "consolidated.00.pth"
    evict_from_page_cache(path)
    cold_read = read_whole_file(path)
    weights = llama3.load_weights(model_dir, config)
    n_params = llama3.count_parameters(weights)
    best = max(rates.values())
    bandwidth, bandwidth_method = memory_bandwidth()
    compute_floor = 2 * multiplied_parameters(weights) * tokens / best
    bandwidth_floor = weight_bytes_read(weights, tokens) / bandwidth
    return {
        "paths": matmul_kernel.model_paths(config, (1, tokens)),
        "cpu_kind": matmul_kernel.cpu_kind(),
        "bandwidth_gb_per_s": bandwidth / 1e9,
        "bandwidth_method": bandwidth_method,
        "weight_gb_forward": weight_bytes_read(weights, tokens) / 1e9,
        "weight_gb_decode": weight_bytes_read(weights, 1) / 1e9,
        "bandwidth_floor_seconds": bandwidth_floor,
        "decode_floor_seconds": weight_bytes_read(weights, 1) / bandwidth,
        "floor_seconds": max(compute_floor, bandwidth_floor),
        "floor_binds": "compute" if compute_floor >= bandwidth_floor else "memory bandwidth",
        "matmul_gflops": {k: v / 1e9 for k, v in rates.items()},
        "kernel_gflops": {k: v / 1e9 for k, v in kernel_rates.items()},
        "best_gflops": best / 1e9,
        "parameters": n_params,
        "multiplied_parameters": multiplied_parameters(weights),
        "tokens": tokens,
        "compute_floor_seconds": compute_floor,
        "matmul_floor_seconds": matmul_seconds,
        "read_gb_per_s": path.stat().st_size / 2**30 / cold_read,
        "cold_read_seconds": cold_read,
    }


FORWARD_RUNS = 5  # timed forward passes over the prompt, after one untimed pass


def run_size(model_dir: Path) -> dict:
    """What one checkpoint needs: memory split into mapped file and anonymous, forward and decode seconds."""
    file_kb_before, anon_kb_before = status_kb("RssFile"), status_kb("RssAnon")
    with PeakMemory() as memory:
        ck = llama3.load_checkpoint(model_dir, device="cpu")
        prompt_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
        llama3.forward(ck.weights, ck.config, prompt_ids)  # untimed: maps every page of the weights
        forward_seconds = []
        for _ in range(FORWARD_RUNS):
            started = time.perf_counter()
            logits = llama3.forward(ck.weights, ck.config, prompt_ids)
            forward_seconds.append(time.perf_counter() - started)
        mapped_kb = status_kb("RssFile") - file_kb_before
        cache = llama3.KVCache(ck.config.n_layers)
        token = int(llama3.forward(ck.weights, ck.config, prompt_ids, cache=cache, last_only=True)[-1].argmax())
        step_seconds = []
        for step in range(1 + DECODE_STEPS):  # the first step untimed, as in run_decode
            started = time.perf_counter()
            token = int(llama3.forward(ck.weights, ck.config, [token], cache=cache, last_only=True)[-1].argmax())
            if step > 0:
                step_seconds.append(time.perf_counter() - started)
    return {
        "parameters": llama3.count_parameters(ck.weights),
        "release": ck.release,
        "file_bytes": (model_dir / "consolidated.00.pth").stat().st_size,
        "mapped_gib": mapped_kb / 2**20,
        "anon_before_load_gib": anon_kb_before / 2**20,
        "peak_anon_gib": memory.peak_anon_kb / 2**20,
        "forward_runs": forward_seconds,
        "forward_seconds": sorted(forward_seconds)[len(forward_seconds) // 2],
        "step_seconds": step_seconds,
        "token_seconds": sorted(step_seconds)[len(step_seconds) // 2],
        "top1": int(logits[-1].argmax()),
    }


def model_name(config: llama3.ModelConfig) -> str:
    return next(
        (n for n, p in llama3.FAMILY_PARAMS.items() if llama3.ModelConfig.from_params(p) == config), "other shape"
    )


def bench_sizes(model_dirs: list[Path]) -> None:
    """The table of what each model needs (see the module's docstring); writes build/sizes.md."""
    results = {}
    for model_dir in model_dirs:
        print(f"measuring {model_dir} ...", flush=True)
        r = in_subprocess("size", model_dir, cache="cached")
        r["disk_bytes"] = (model_dir / "consolidated.00.pth").stat().st_blocks * 512
        results[model_name(llama3.read_params(model_dir))] = r | {"dir": str(model_dir)}
    load = os.getloadavg()
    lines = [
        f"Machine: {machine_description()}. Weight matmuls: {matmul_kernel.backend()}. "
        f"Load average (1, 5, 15 min) at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
        "",
        f"Synthetic checkpoints in Meta's original format; each row a fresh process with the file in the page cache. "
        f"RAM for a smooth run = weights mapped + peak anonymous memory of the process (Python, torch, "
        f"activations, key/value cache); with less, pages of the weights are read from disk again at every "
        f"forward pass. Forward: the {len(prompt_token_ids(model_dirs[0]))}-token prompt, median of {FORWARD_RUNS} "
        f"passes after an untimed one; decode: generating with the key/value cache, median of {DECODE_STEPS} steps.",
        "",
        "| model | parameters | file on disk GB | weights mapped GiB | peak anonymous GiB | RAM for a smooth run GiB | forward s | s / token | tokens / s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['parameters'] / 1e9:.2f}e9 | {r['file_bytes'] / 1e9:.2f} | {r['mapped_gib']:.2f} | "
            f"{r['peak_anon_gib']:.2f} | {r['mapped_gib'] + r['peak_anon_gib']:.1f} | {r['forward_seconds']:.2f} | "
            f"{r['token_seconds']:.3f} | {1 / r['token_seconds']:.1f} |"
        )
    lines += [
        "",
        "Each run's forward seconds: "
        + "; ".join(f"{n}: " + ", ".join(f"{t:.2f}" for t in r["forward_runs"]) for n, r in results.items())
        + ". Decode seconds per step: "
        + "; ".join(f"{n}: " + ", ".join(f"{t:.3f}" for t in r["step_seconds"]) for n, r in results.items())
        + ". Anonymous memory before loading (Python and torch): "
        + ", ".join(f"{n} {r['anon_before_load_gib']:.2f} GiB" for n, r in results.items())
        + ".",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "sizes.md").write_text(table + "\n")
    (BUILD / "sizes.json").write_text(
        json.dumps({"machine": machine_description(), "load_average": load, "models": results}, indent=2) + "\n"
    )


def prompt_token_ids(model_dir: Path) -> list[int]:
    config = llama3.read_params(model_dir)
    return llama3.encode_prompt(llama3.load_tokenizer(model_dir / "tokenizer.model"), llama3.DEFAULT_PROMPT, config)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the machine's architecture where there is none."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.machine()
    )


def machine_description() -> str:
    """CPU model, cores, RAM and torch version."""
    ram_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, {ram_gib:.0f} GiB RAM, torch {torch.__version__}"


APPROACHES = {"ours": run_ours, "baseline": run_baseline, "floor": run_floor, "decode": run_decode, "size": run_size}


def in_subprocess(approach: str, model_dir: Path, cache: str = "warm", env: dict | None = None, runs: int = 1) -> dict:
    """Run one approach in a fresh process. cache: "cold" (file evicted from the page cache),
    "fresh" (evicted, then read with read(): in the page cache but never mapped since),
    "cached" (read with read() beforehand), or "warm" (cached and mapped by one earlier,
    discarded run of the same approach). With runs > 1: the run with the median forward time,
    and every run's forward seconds in "forward_runs"."""
    path = model_dir / "consolidated.00.pth"
    command = [sys.executable, "-m", __spec__.name, "--model-dir", str(model_dir), "--approach", approach]
    environment = {**os.environ, **(env or {})}
    if cache in ("cold", "fresh"):
        evict_from_page_cache(path)
    if cache != "cold":
        read_whole_file(path)
    if cache == "warm":
        subprocess.run(command, capture_output=True, check=True, env=environment)
    results = []
    for _ in range(runs):
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if runs == 1:
        return results[0]
    results.sort(key=lambda r: r["forward_seconds"])
    return {**results[len(results) // 2], "forward_runs": [r["forward_seconds"] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=BUILD / "llama3-8b-synthetic")
    parser.add_argument("--approach", choices=sorted(APPROACHES), help=argparse.SUPPRESS)
    parser.add_argument("--skip-baseline", action="store_true", help="skip the 16 GB in-RAM baseline")
    parser.add_argument(
        "--sizes", type=Path, nargs="+", metavar="DIR", help="what each checkpoint needs: build/sizes.md"
    )
    args = parser.parse_args()
    if args.sizes:
        for model_dir in args.sizes:
            try:
                llama3.checkpoint_layout(model_dir)
            except llama3.CheckpointError as e:
                sys.exit(
                    f"error: {e}\nWrite the synthetic checkpoints with `make synthetic-1b synthetic-3b synthetic-8b`."
                )
        bench_sizes(args.sizes)
        return
    try:
        llama3.checkpoint_layout(args.model_dir)
    except llama3.CheckpointError as e:
        sys.exit(f"error: {e}\nBuild the synthetic 8B checkpoint with `make synthetic-8b`.")
    if args.approach:
        print(json.dumps(APPROACHES[args.approach](args.model_dir)))
        return

    print(f"benchmarking {args.model_dir} ...", flush=True)
    floor = in_subprocess("floor", args.model_dir, cache="cached")
    warm = in_subprocess("ours", args.model_dir, runs=5)
    warm_torch = in_subprocess("ours", args.model_dir, env={"LLAMA3_MATMUL": "torch"}, runs=5)
    decode = in_subprocess("decode", args.model_dir)
    decode_torch = in_subprocess("decode", args.model_dir, env={"LLAMA3_MATMUL": "torch"})
    just_read = in_subprocess("ours", args.model_dir, cache="fresh")
    cold = in_subprocess("ours", args.model_dir, cache="cold")
    baseline = None if args.skip_baseline else in_subprocess("baseline", args.model_dir, cache="cached")
    load = os.getloadavg()
    # The bandwidth: the best of three measurements in this run (other processes can only lower it).
    measured = [floor["bandwidth_gb_per_s"], decode["bandwidth_gb_per_s"], decode_torch["bandwidth_gb_per_s"]]
    bw = max(measured)
    weights_gb, decode_gb = floor["weight_gb_forward"], floor["weight_gb_decode"]
    floor["bandwidth_floor_seconds"] = weights_gb / bw
    floor["decode_floor_seconds"] = decode_gb / bw
    floor["floor_seconds"] = max(floor["compute_floor_seconds"], floor["bandwidth_floor_seconds"])
    floor["floor_binds"] = (
        "compute" if floor["compute_floor_seconds"] >= floor["bandwidth_floor_seconds"] else "memory bandwidth"
    )

    size_gb = (args.model_dir / "consolidated.00.pth").stat().st_size / 2**30
    machine = machine_description()
    rows = [
        ("ours, warm page cache (median of 5 runs)", warm),
        ("ours, warm, torch's matmul (LLAMA3_MATMUL=torch, median of 5)", warm_torch),
        ("ours, file just read into the page cache, never mapped", just_read),
        ("ours, cold page cache", cold),
        ("baseline: all in RAM, per-head loops", baseline),
    ]
    fl = floor["floor_seconds"]
    lines = [
        f"Machine: {machine}. Checkpoint: {args.model_dir.name} ({size_gb:.1f} GiB, {floor['parameters'] / 1e9:.2f}e9 parameters), "
        f"{floor['tokens']} prompt tokens. CPU: {floor['cpu_kind']}. Weight matmuls: {matmul_kernel.backend()}. "
        f"Memory bandwidth: {bw:.1f} GB/s ({floor['bandwidth_method']}; best of "
        + ", ".join(f"{b:.1f}" for b in measured)
        + " GB/s measured in this run). "
        f"Load average (1, 5, 15 min) at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
        "",
        f"Forward pass over the prompt: floor {fl:.2f} s, the larger of compute ({floor['compute_floor_seconds']:.2f} s) "
        f"and one read of its {floor['weight_gb_forward']:.1f} GB of weights ({floor['bandwidth_floor_seconds']:.2f} s): "
        f"{floor['floor_binds']} binds.",
        "",
        f"**Prefill** (the forward pass over the prompt, warm, the first in a fresh process, so with the kernel's "
        f"one-time checks of each new shape; median of 5): {warm['forward_seconds']:.3f} s, "
        f"{100 * fl / warm['forward_seconds']:.0f}% of its floor ({fl:.3f} s). **Decode** (median of {DECODE_STEPS} steps): {decode['median_seconds']:.3f} s per token, "
        f"{100 * floor['decode_floor_seconds'] / decode['median_seconds']:.0f}% of its floor "
        f"({floor['decode_floor_seconds']:.3f} s: one read of {floor['weight_gb_decode']:.1f} GB at {bw:.1f} GB/s).",
        "",
        "Which code served each weight matmul on this machine:",
        "",
        f"| weight | decode step (1 row of x) | prompt ({floor['tokens']} rows) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {p[1]} | {p[floor['tokens']]} |" for name, p in ((n, {int(k): v for k, v in p.items()})
                                                                       for n, p in floor["paths"].items())]  # fmt: skip
    lines += [
        "",
        "| approach | wall s (load + forward) | forward s | peak anon GiB | peak total GiB | top-1 | ours/baseline (wall) | forward / floor | forward / torch's matmuls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        if r is None:
            continue
        vs_baseline = ""
        if name.startswith("ours") and baseline:
            vs_baseline = f"{r['seconds'] / baseline['seconds']:.2f}"
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['forward_seconds']:.2f} | {r['peak_anon_gb']:.2f} | "
            f"{r['peak_total_gb']:.2f} | {r['top1']} | {vs_baseline} | {r['forward_seconds'] / fl:.2f} | "
            f"{r['forward_seconds'] / floor['matmul_floor_seconds']:.2f} |"
        )
    lines.append(
        f"| floor: compute, 2 x {floor['multiplied_parameters'] / 1e9:.2f}e9 multiplied parameters x tokens at "
        f"{floor['best_gflops']:.0f} GFLOP/s bf16 | | {floor['compute_floor_seconds']:.2f} | | | | | "
        f"{floor['compute_floor_seconds'] / fl:.2f} | |"
    )
    lines.append(
        f"| floor: reading the weights once, {floor['weight_gb_forward']:.1f} GB at {bw:.1f} GB/s | | "
        f"{floor['bandwidth_floor_seconds']:.2f} | | | | | {floor['bandwidth_floor_seconds'] / fl:.2f} | |"
    )
    lines.append(
        f"| reference: the forward's matmuls, each at torch's bf16 rate for its shape | | {floor['matmul_floor_seconds']:.2f} | | | | | | 1.00 |"
    )
    lines.append(
        f"| floor: reading the file from disk once at {floor['read_gb_per_s']:.2f} GiB/s | {floor['cold_read_seconds']:.2f} | | | | | | | |"
    )
    dfl = floor["decode_floor_seconds"]
    lines += [
        "",
        f"Decode (generating with the key/value cache, one token per step, warm page cache; median of {DECODE_STEPS} steps):",
        "",
        "| approach | s / token | tokens / s | % of the bandwidth floor |",
        "|---|---|---|---|",
    ]
    for name, r in (("ours", decode), ("ours, torch's matmul (LLAMA3_MATMUL=torch)", decode_torch)):
        lines.append(
            f"| {name} | {r['median_seconds']:.3f} | {1 / r['median_seconds']:.2f} | {100 * dfl / r['median_seconds']:.0f}% |"
        )
    lines.append(f"| floor: reading the weights once per token, {floor['weight_gb_decode']:.1f} GB at {bw:.1f} GB/s | "
                 f"{dfl:.3f} | {1 / dfl:.2f} | 100% |")  # fmt: skip
    lines += [
        "",
        "bf16 matmul GFLOP/s by shape: "
        + ", ".join(f"{k} {v:.0f}" for k, v in floor["matmul_gflops"].items())
        + (
            ". The kernel's: " + ", ".join(f"{k} {v:.0f}" for k, v in floor["kernel_gflops"].items())
            if floor["kernel_gflops"]
            else ""
        )
        + f". Cold run read {cold.get('disk_read_gb', 0):.1f} GiB from disk for a {size_gb:.1f} GiB file."
        + " Warm forward seconds, each run: "
        + ", ".join(f"{t:.2f}" for t in warm["forward_runs"])
        + "; with torch's matmul: "
        + ", ".join(f"{t:.2f}" for t in warm_torch["forward_runs"])
        + ". Decode seconds per step: "
        + ", ".join(f"{t:.3f}" for t in decode["step_seconds"])
        + "; with torch's matmul: "
        + ", ".join(f"{t:.3f}" for t in decode_torch["step_seconds"])
        + ".",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "bench.md").write_text(table + "\n")
    report = {"machine": machine, "load_average": load, "bandwidth_gb_per_s": bw, "floor": floor, "ours_warm": warm,
              "ours_warm_torch_matmul": warm_torch, "decode": decode, "decode_torch_matmul": decode_torch,
              "ours_just_read": just_read, "ours_cold": cold, "baseline": baseline}  # fmt: skip
    (BUILD / "bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
