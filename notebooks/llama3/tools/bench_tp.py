"""Benchmark of tensor parallelism (llama3.parallel) on a slice of Llama 3 70B: its exact widths, a few layers.

For 1, 2, 4 and 8 processes (torchrun, gloo on the CPU), each process measures, after a warm forward pass:
- memory: anonymous and file-mapped resident memory (RssAnon, RssFile in /proc/self/status);
- time per layer: the median over several forward passes of the prompt (17 tokens), and over several decode
  steps (one new token with the key/value cache), of the mean time of its layers;
- the collectives' share of it: the seconds spent inside all_reduce / all_gather (llama3.time_collectives),
  which includes waiting for the slowest rank;
- the embedding and the logits (with their collectives), per pass.
Beside them the one-process forward on the 8 shards (llama3.forward on ShardedWeights, one process mapping them
all). The slice is in 8 shards (make synthetic-70b-slice); N processes need N shards, so the same weights are
regrouped into build/<slice>-N-shards for N = 1, 2, 4, one at a time, and deleted after their run (--keep keeps
them). Each process gets max(1, cores // N) threads: with more processes than cores they share the cores.

From the per-layer figures it estimates a token of the whole Llama 3 70B (80 layers) and Llama 3.1 405B
(126 layers), on this machine and, on paper, on 8 GPUs with NVLink and on 2 nodes over 100 Gb/s Ethernet.

    python scripts/bench/bench_tp.py [--model-dir build/llama3-70b-slice]

Prints a markdown table and writes build/bench-tp.md and build/bench-tp.json.
"""

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import llama3
from llama3.tools.bench import cpu_model

BUILD = llama3.REPO_DIR / "build"
PROCESSES = (1, 2, 4, 8)
PROMPT_PASSES = 7  # timed forward passes over the prompt, after one untimed
DECODE_STEPS = 10  # timed decode steps, after one untimed
QUIET_BUSY_CORES = 0.5  # wait while other processes keep more than this many cores busy


def status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


# --- one pass, timed part by part -------------------------------------------------------------


def timed_pass(embed, layer, logits, n_layers: int, collectives: list[float]) -> tuple[torch.Tensor, dict]:
    """embed() -> x; layer(x, i) -> x for every layer; logits(x). Wall seconds of the layers (each) and of the
    embedding + logits, and the collectives' seconds inside each (collectives: the list the hook fills)."""
    started, before = time.perf_counter(), len(collectives)
    x = embed()
    embed_seconds, embed_coll = time.perf_counter() - started, sum(collectives[before:])
    layer_seconds, layer_coll = [], []
    for i in range(n_layers):
        started, before = time.perf_counter(), len(collectives)
        x = layer(x, i)
        layer_seconds.append(time.perf_counter() - started)
        layer_coll.append(sum(collectives[before:]))
    started, before = time.perf_counter(), len(collectives)
    out = logits(x)
    ends = embed_seconds + time.perf_counter() - started
    return out, {"layer_seconds": layer_seconds, "layer_collective_seconds": layer_coll,
                 "ends_seconds": ends, "ends_collective_seconds": embed_coll + sum(collectives[before:])}  # fmt: skip


def summarise(passes: list[dict]) -> dict:
    """Medians over passes of: the mean layer time, its collectives, and the embedding + logits."""
    per_layer = [statistics.mean(p["layer_seconds"]) for p in passes]
    coll = [statistics.mean(p["layer_collective_seconds"]) for p in passes]
    return {
        "layer_seconds": statistics.median(per_layer),
        "layer_collective_seconds": statistics.median(coll),
        "collective_share": statistics.median(c / t for c, t in zip(coll, per_layer)),
        "ends_seconds": statistics.median(p["ends_seconds"] for p in passes),
        "ends_collective_seconds": statistics.median(p["ends_collective_seconds"] for p in passes),
        "passes": [[round(t, 5) for t in p["layer_seconds"]] for p in passes],
    }


def measure(forward_parts, n_layers: int, prompt_ids, new_cache, reference=None) -> dict:
    """The prompt's passes and the decode steps, given forward_parts(ids, cache, last_only) -> (embed, layer, logits).
    reference(ids) gives the logits the timed loop must reproduce exactly (the module's own forward)."""
    collectives: list[float] = []
    llama3.time_collectives(collectives)
    try:
        out, _ = timed_pass(*forward_parts(prompt_ids, None, False), n_layers, collectives)  # warm
        if reference is not None and not torch.equal(out, reference(prompt_ids)):
            raise AssertionError("the timed loop's logits differ from the module's forward pass")
        top1 = int(out[-1].argmax())
        prompt = [
            timed_pass(*forward_parts(prompt_ids, None, False), n_layers, collectives)[1] for _ in range(PROMPT_PASSES)
        ]
        cache = new_cache()
        logits, _ = timed_pass(*forward_parts(prompt_ids, cache, True), n_layers, collectives)
        token, decode = int(logits[-1].argmax()), []
        for step in range(1 + DECODE_STEPS):
            logits, timing = timed_pass(*forward_parts([token], cache, True), n_layers, collectives)
            token = int(logits[-1].argmax())
            if step > 0:
                decode.append(timing)
    finally:
        llama3.time_collectives(None)
    return {"top1": top1, "prompt": summarise(prompt), "decode": summarise(decode),
            "rss_anon_gib": status_gib("RssAnon"), "rss_file_gib": status_gib("RssFile")}  # fmt: skip


# --- the runs -------------------------------------------------------------------------------------


def worker(model_dir: Path, out_dir: Path) -> None:
    """One rank under torchrun."""
    rank, world_size, _ = llama3.init_tensor_parallel()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    config = llama3.read_params(model_dir)
    shard = llama3.load_rank_shard(model_dir, config, rank, world_size)
    tokenizer = llama3.load_tokenizer(model_dir / "tokenizer.model", config.release)
    prompt_ids = llama3.encode_prompt(tokenizer, llama3.DEFAULT_PROMPT, config)

    def parts(ids, cache, last_only):
        start = len(cache) if cache is not None else 0
        freqs_cis = llama3.rope_freqs_cis(config, len(ids), start=start)
        return (lambda: llama3.vocab_parallel_embed(shard, ids),
                lambda x, i: llama3.tp_transformer_layer(x, shard, i, freqs_cis, cache),
                lambda x: llama3.vocab_parallel_logits(x[-1:] if last_only else x, shard))  # fmt: skip

    with torch.inference_mode():
        result = measure(parts, config.n_layers, prompt_ids, lambda: llama3.KVCache(config.n_layers),
                         reference=lambda ids: llama3.tp_forward(shard, ids))  # fmt: skip
    result |= {"rank": rank, "threads": torch.get_num_threads()}
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(result))
    dist_barrier_and_close()


def dist_barrier_and_close() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def one_process(model_dir: Path, out_dir: Path) -> None:
    """llama3.forward on the shards, one process mapping them all (ShardedWeight: notebook 17)."""
    ck = llama3.load_checkpoint(model_dir, device="cpu")
    config, w = ck.config, ck.weights
    prompt_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, config)

    def parts(ids, cache, last_only):
        start = len(cache) if cache is not None else 0
        freqs_cis = llama3.rope_freqs_cis(config, len(ids), start=start)
        return (lambda: llama3.embed(w["tok_embeddings.weight"], ids),
                lambda x, i: llama3.transformer_layer(x, llama3.layer_weights(w, i), config, freqs_cis, cache, i),
                lambda x: llama3.output_logits(x[-1:] if last_only else x, w, config))  # fmt: skip

    with torch.inference_mode():
        result = measure(parts, config.n_layers, prompt_ids, lambda: llama3.KVCache(config.n_layers),
                         reference=lambda ids: llama3.forward(w, config, ids))  # fmt: skip
    result |= {"rank": None, "threads": torch.get_num_threads()}
    (out_dir / "one-process.json").write_text(json.dumps(result))


def cpu_seconds() -> tuple[float, float]:
    """The machine's CPU seconds so far (all cores): (busy, total), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / tick, sum(fields) / tick  # less idle and iowait


def cpu_busy_cores(seconds: float = 3.0) -> float:
    """Cores kept busy by the machine's processes over a few seconds, while this benchmark idles."""
    busy0, total0 = cpu_seconds()
    time.sleep(seconds)
    busy1, total1 = cpu_seconds()
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1e-9, total1 - total0)


def others_during(run):
    """run()'s result, and the cores other work kept busy meanwhile: the machine's busy CPU seconds less those
    of run()'s child processes (torchrun and its ranks), over the wall time."""
    busy0, _ = cpu_seconds()
    children0, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = run()
    busy1, _ = cpu_seconds()
    children1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - started
    ours = children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
    return result, max(0.0, busy1 - busy0 - ours) / wall


def wait_for_quiet(waited: list[float], max_wait: float) -> dict:
    """Wait (up to max_wait seconds over the whole benchmark) while other work keeps the cores busy."""
    busy = cpu_busy_cores()
    while busy > QUIET_BUSY_CORES and sum(waited) < max_wait:
        print(f"  other work keeps {busy:.1f} cores busy: waiting 30 s", flush=True)
        time.sleep(30)
        waited.append(30)
        busy = cpu_busy_cores()
    return {"busy_cores_before": round(busy, 2), "load_before": os.getloadavg()[0]}


def run_processes(model_dir: Path, n: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", __spec__.name,
               "--model-dir", str(model_dir), "--worker", out]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return [json.loads((Path(out) / f"rank-{r}.json").read_text()) for r in range(n)]


def run_one_process(model_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", __spec__.name, "--model-dir", str(model_dir), "--one-process", out], check=True
        )
        return json.loads((Path(out) / "one-process.json").read_text())


def read_files(folder: Path) -> None:
    """Into the page cache, so that every run starts from the same place (warm)."""
    for path in sorted(folder.glob("consolidated.*.pth")):
        with open(path, "rb", buffering=0) as f:
            buffer = bytearray(64 << 20)
            while f.readinto(buffer):
                pass


# --- estimates ---------------------------------------------------------------------------------------

# On paper. Every figure is an assumption, stated in the report.
GPU = {"name": "H100 SXM", "hbm_gb": 80, "hbm_gb_per_s": 3350}
GPU_405B = {"name": "H200 SXM", "hbm_gb": 141, "hbm_gb_per_s": 4800}  # 405B's 101 GB per rank do not fit in 80 GB
NETWORKS = {
    "8 GPUs, NVLink (one node)": {"gb_per_s": 450, "latency_us": 10,
                                  "note": "NCCL all-reduce bus bandwidth ~450 GB/s of NVLink 4's 900 GB/s; ~10 us per small all-reduce"},
    "2 nodes x 4 GPUs, 100 Gb/s Ethernet": {"gb_per_s": 12.5, "latency_us": 50,
                                            "note": "100 Gb/s = 12.5 GB/s per link, one link per node; ~50 us per all-reduce over TCP"},
}  # fmt: skip
FULL = {"Llama 3 70B": llama3.SHARDED_PARAMS["Llama 3 70B"], "Llama 3.1 405B": llama3.SHARDED_PARAMS["Llama 3.1 405B"]}


def model_bytes(params: dict) -> tuple[int, int]:
    """bfloat16 bytes of one layer and of the embedding + output + final norm."""
    shapes = llama3.expected_shapes(llama3.ModelConfig.from_params(params))
    layer = sum(math.prod(s) for k, s in shapes.items() if k.startswith("layers.0.")) * 2
    ends = sum(math.prod(s) for k, s in shapes.items() if not k.startswith("layers.")) * 2
    return layer, ends


def estimates(slice_params: dict, runs: dict, one: dict, tokens: int) -> list[str]:
    slice_layer, slice_ends = model_bytes(slice_params)
    lines = ["Estimates per token (decode, one new token with the key/value cache) and per prompt (17 tokens), from the",
             "slowest rank's median per-layer time x layers + the embedding and logits, the 405B's per-layer time scaled",
             "by its layer's bytes (memory-bound) and its ends by theirs:", "",
             "| run | 70B decode s/token | 70B prompt s | 405B decode s/token | 405B prompt s |", "|---|---|---|---|---|"]  # fmt: skip
    rows = [
        (f"{n} process{'es' if n > 1 else ''}", max(ranks, key=lambda r: r["decode"]["layer_seconds"]))
        for n, ranks in runs.items()
    ]
    rows.append(("one process, shard by shard", one))
    for name, r in rows:
        cells = []
        for model in FULL:
            layer, ends = model_bytes(FULL[model])
            n_layers = FULL[model]["n_layers"]
            for phase in ("decode", "prompt"):
                p = r[phase]
                cells.append(
                    p["layer_seconds"] * layer / slice_layer * n_layers + p["ends_seconds"] * ends / slice_ends
                )
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in (cells[0], cells[1], cells[2], cells[3])) + " |")
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    lines += ["", "These assume the weights stay in memory. They do not fit in this machine's "
              f"{ram / 2**30:.0f} GiB: 70B is {sum(model_bytes(FULL['Llama 3 70B'])[i] * (80 if i == 0 else 1) for i in (0, 1)) / 1e9:.0f} GB, "
              f"405B {(model_bytes(FULL['Llama 3.1 405B'])[0] * 126 + model_bytes(FULL['Llama 3.1 405B'])[1]) / 1e9:.0f} GB, so every token would read them from disk."]  # fmt: skip
    lines += ["", "On paper, 8 ranks: weights per rank / HBM bandwidth + 2 x layers all-reduces x (bytes moved / link bandwidth + "
              "latency); a ring all-reduce of M bytes moves 2 (N-1)/N x M through each link, M = tokens x dim x 2 bytes (bfloat16, "
              "as Meta's code sums; this project's CPU code sums in float32, twice the bytes). Compute is left out: a decode step "
              "is bound by reading the weights.", "",
              "| setting | model | GPU (HBM) | weights per rank GB | read s | all-reduces | per all-reduce us (decode) | decode s/token | prompt (17 tokens) collectives s |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for setting, net in NETWORKS.items():
        for model, params in FULL.items():
            gpu = GPU_405B if "405B" in model else GPU
            layer, ends = model_bytes(params)
            per_rank = (layer * params["n_layers"] + ends) / 8
            read = per_rank / (gpu["hbm_gb_per_s"] * 1e9)
            n_reduce = 2 * params["n_layers"]
            one_reduce = lambda t, dim=params["dim"], net=net: (
                2 * 7 / 8 * t * dim * 2 / (net["gb_per_s"] * 1e9) + net["latency_us"] * 1e-6
            )
            lines.append(f"| {setting} | {model} | {gpu['name']} ({gpu['hbm_gb_per_s'] / 1000:.2f} TB/s) | {per_rank / 1e9:.1f} | "
                         f"{read * 1e3:.1f} ms | {n_reduce} | {one_reduce(1) * 1e6:.1f} | {read + n_reduce * one_reduce(1):.4f} | "
                         f"{n_reduce * one_reduce(tokens):.4f} |")  # fmt: skip
    lines += ["", "Assumed: " + "; ".join(f"{s}: {n['note']}" for s, n in NETWORKS.items())
              + f"; {GPU['name']} {GPU['hbm_gb']} GB at {GPU['hbm_gb_per_s']} GB/s; 405B's weights per rank exceed 80 GB, so "
              f"its rows assume {GPU_405B['name']} ({GPU_405B['hbm_gb']} GB, {GPU_405B['hbm_gb_per_s']} GB/s). "
              "The logits' all_gather (once per token) is left out."]  # fmt: skip
    return lines


# --- the report ----------------------------------------------------------------------------------


def row(name: str, n: int, r: dict) -> str:
    p, d = r["prompt"], r["decode"]
    rank = "" if r["rank"] is None else r["rank"]
    return (f"| {name} | {rank} | {r['threads']} | {r['rss_anon_gib']:.2f} | {r['rss_file_gib']:.2f} | "
            f"{p['layer_seconds'] * 1e3:.0f} | {100 * p['collective_share']:.0f}% | {d['layer_seconds'] * 1e3:.1f} | "
            f"{100 * d['collective_share']:.0f}% | {p['ends_seconds'] * 1e3:.0f} / {d['ends_seconds'] * 1e3:.0f} | {r['top1']} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=BUILD / "llama3-70b-slice")
    parser.add_argument("--processes", type=int, nargs="+", default=list(PROCESSES))
    parser.add_argument("--keep", action="store_true", help="keep the slice regrouped in 1, 2, 4 shards")
    parser.add_argument(
        "--max-wait-minutes", type=float, default=20, help="at most this long, in all, waiting for quiet"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--one-process", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.model_dir, args.worker)
    if args.one_process:
        return one_process(args.model_dir, args.one_process)
    try:
        files = llama3.shard_files(args.model_dir) if args.model_dir.is_dir() else []
        if not files:
            raise llama3.CheckpointError(f"{args.model_dir} holds no consolidated.NN.pth")
    except llama3.CheckpointError as e:
        sys.exit(f"error: {e}\nWrite the slice with `make synthetic-70b-slice`.")
    n_files, waited = len(files), []
    params = json.loads((args.model_dir / "params.json").read_text())
    config = llama3.ModelConfig.from_params(params)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs, quiet = {}, {}
    for n in args.processes:
        folder = args.model_dir if n == n_files else args.model_dir.with_name(f"{args.model_dir.name}-{n}-shards")
        if not (folder / "params.json").exists():
            print(f"regrouping {args.model_dir.name} into {n} shards: {folder}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            llama3.reshard(args.model_dir, folder, n)
        read_files(folder)
        quiet[n] = wait_for_quiet(waited, 60 * args.max_wait_minutes)
        print(f"{n} processes ({quiet[n]['busy_cores_before']:.1f} cores busy before) ...", flush=True)
        runs[n], quiet[n]["busy_cores_during"] = others_during(lambda folder=folder, n=n: run_processes(folder, n))
        if folder != args.model_dir and not args.keep:
            shutil.rmtree(folder)
    read_files(args.model_dir)
    quiet["one"] = wait_for_quiet(waited, 60 * args.max_wait_minutes)
    print(f"one process, {n_files} shards ...", flush=True)
    one, quiet["one"]["busy_cores_during"] = others_during(lambda: run_one_process(args.model_dir))
    load = os.getloadavg()

    cores = os.cpu_count() or 1
    cpu = cpu_model()
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    slice_layer, slice_ends = model_bytes(params)
    tokens = len(
        llama3.encode_prompt(llama3.load_tokenizer(args.model_dir / "tokenizer.model"), llama3.DEFAULT_PROMPT, config)
    )
    lines = [
        f"Machine: {cpu} ({platform.machine()}), {cores} cores, {ram:.0f} GiB RAM, torch {torch.__version__}, gloo; "
        f"measured {started}. Checkpoint: {args.model_dir.name} (dim {config.dim}, {config.n_heads} query and "
        f"{config.n_kv_heads} key/value heads, FFN {config.ffn_hidden_dim}, vocabulary {config.vocab_size}) with {config.n_layers} "
        f"layers ({slice_layer / 1e9:.2f} GB each; embedding + output {slice_ends / 1e9:.2f} GB), in {n_files} shards; N processes "
        f"read it regrouped in N shards. Prompt: {tokens} tokens.",
        "",
        "Per rank, after a warm pass: resident anonymous and file-mapped memory; per layer, the median over "
        f"{PROMPT_PASSES} passes over the prompt and over {DECODE_STEPS} decode steps (one token, key/value cache) of the "
        "mean time of a layer, and the share of it spent inside all_reduce (which includes waiting for the slowest rank); "
        "the embedding + logits per pass (with their all_reduce and all_gather).",
        "",
        "| run | rank | threads | RssAnon GiB | RssFile GiB | prompt ms/layer | collectives | decode ms/layer | collectives | embedding + logits ms (prompt / decode) | top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, ranks in runs.items():
        name = f"{n} process{'es' if n > 1 else ''}" + (
            f" on {cores} cores (oversubscribed {n // cores}x)" if n > cores else ""
        )
        lines += [row(name, n, r) for r in ranks]
    lines.append(row(f"one process, {n_files} shards (llama3.forward on ShardedWeights)", 1, one))
    lines += [
        "",
        f"Quiet: cores kept busy by other work (of {cores}) just before / during each run: "
        + ", ".join(
            f"{'one process' if k == 'one' else str(k) + ' processes'}: {v['busy_cores_before']:.1f} / "
            f"{v['busy_cores_during']:.1f}"
            for k, v in quiet.items()
        )
        + f"; waited {sum(waited):.0f} s for quiet. Load average at the end (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}. "
        "With 4 and 8 processes on 2 cores, each process has 1 thread and the processes take turns on the cores: "
        "their times are those of a CPU shared 2 and 4 ways, not of 4 or 8 machines, and the collectives' share "
        "then mostly counts the time a rank waits for others that are not running.",
        "",
        *estimates(params, runs, one, tokens),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "bench-tp.md").write_text(table + "\n")
    (BUILD / "bench-tp.json").write_text(
        json.dumps({"runs": runs, "one_process": one, "quiet": quiet, "load": load}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
