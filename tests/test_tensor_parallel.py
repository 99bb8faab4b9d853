"""Tensor parallelism across processes (llama3.parallel, scripts/run/run_tp.py), launched the way it runs for real:
torchrun starting one process per shard, talking over torch.distributed (gloo on this CPU).

Each run's logits (saved by rank 0) must equal the one-process forward pass on the single file within
llama3.logits_tolerance, and Meta's reference Transformer run model-parallel over the same shards
(llama3.tools.tp_reference: fairscale, one process per shard). Faults must end every process within
seconds, with one message from rank 0 and no traceback.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

import llama3
from llama3.tools import synthetic

REPO = Path(__file__).resolve().parent.parent
RUN_TP = REPO / "scripts" / "run" / "run_tp.py"
REFERENCE = ["-m", "llama3.tools.tp_reference"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
NEW_TOKENS = 8


def launch_env(ckpt_dir, tag, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA3_")}
    env |= {"LLAMA3_DIR": str(ckpt_dir), "OMP_NUM_THREADS": "1", "LLAMA3_MAX_NEW_TOKENS": str(NEW_TOKENS)}
    env |= {"LLAMA3_TP_TEST_TAG": tag, "PYTHONUNBUFFERED": "1"} | extra
    return env


def tagged_processes(tag: str) -> list[int]:
    """Pids of live processes started by a test run (they inherit its tag in their environment)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"LLAMA3_TP_TEST_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return pids


def assert_all_gone(tag: str) -> None:
    deadline = time.monotonic() + 3
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged_processes(tag) == [], "processes of the run are still alive"


def run(cmd, ckpt_dir, timeout=120, **extra) -> tuple[subprocess.CompletedProcess, float]:
    """Run a launch to its end; returns it and its wall time, after checking that none of its processes is left."""
    tag = uuid.uuid4().hex
    started = time.monotonic()
    done = subprocess.run(
        cmd, env=launch_env(ckpt_dir, tag, **extra), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    elapsed = time.monotonic() - started
    assert_all_gone(tag)
    return done, elapsed


def torchrun_tp(ckpt_dir, n, out: Path, **extra):
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", str(n), str(RUN_TP)]
    done, _ = run(cmd + ["--save-logits", str(out), "--summary", str(out.with_suffix(".json"))], ckpt_dir, **extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True), done


def meta_reference(ckpt_dir, n, out: Path) -> torch.Tensor:
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", str(n), *REFERENCE, str(ckpt_dir), str(out)]
    done, _ = run(cmd, ckpt_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)["logits"]


def assert_same_predictions(logits, reference, config):
    tolerance = llama3.logits_tolerance(config)
    relative = ((logits - reference).abs().max() / reference.abs().max()).item()
    assert relative <= tolerance, f"logits differ by {relative:.4f} of the largest, tolerance {tolerance:.4f}"
    for t in range(reference.shape[0]):
        assert llama3.same_prediction(logits[t], reference[t], tolerance), f"position {t}"


def assert_same_generation(result, reference: llama3.Generation, config) -> None:
    """Greedy tokens equal the reference's while both read the same sequence; where they part, the reference's
    logits must call it a tie (same_prediction: the chosen token within the tolerance of its top)."""
    tolerance = llama3.logits_tolerance(config)
    assert len(result["generated_ids"]) == len(reference.token_ids)
    for step, (token, expected) in enumerate(zip(result["generated_ids"], reference.token_ids)):
        assert llama3.same_prediction(result["step_logits"][step], reference.step_logits[step], tolerance), (
            f"step {step}"
        )
        if token != expected:
            break  # from here on the two continue different sequences


@pytest.mark.parametrize("n", [1, 2, 4])
def test_tensor_parallel_equals_one_process_and_metas_model_parallel(
    demo, demo_shards, demo_prompt, demo_logits, tmp_path, n
):
    result, done = torchrun_tp(demo_shards / f"demo-{n}", n, tmp_path / "tp.pt")
    logits = result["logits"]
    assert result["token_ids"] == demo_prompt and logits.shape == (len(demo_prompt), demo.config.vocab_size)
    assert int(logits[-1].argmax()) == 2983  # "42"
    assert_same_predictions(logits, demo_logits, demo.config)
    # the one-process forward on the same shards adds the same partial sums in float32 and rounds once
    # (ShardedWeight.linear): for one or two ranks that is the same sum, a + b, so bit for bit; with more,
    # gloo may add in another order (on this machine the 4 ranks' logits are bit-equal too)
    sharded = llama3.load_checkpoint(demo_shards / f"demo-{n}")
    one_process = llama3.forward(sharded.weights, sharded.config, demo_prompt)
    if n <= 2:
        assert torch.equal(logits, one_process)
    assert_same_predictions(logits, one_process, demo.config)
    # Meta's Transformer over fairscale, N processes: all-reduces bfloat16 partials, so within the tolerance
    assert_same_predictions(logits, meta_reference(demo_shards / f"demo-{n}", n, tmp_path / "meta.pt"), demo.config)
    # greedy generation with each rank's cache: the one-process generation on the same demo_shards, token for token
    stop_ids = llama3.stop_token_ids(demo.tokenizer)
    assert (
        result["generated_ids"]
        == llama3.generate(sharded.weights, sharded.config, demo_prompt, NEW_TOKENS, stop_ids).token_ids
    )
    # and the single file's, up to a tie in its bfloat16 logits that rounding breaks either way
    assert_same_generation(
        result, llama3.generate(demo.weights, demo.config, demo_prompt, NEW_TOKENS, stop_ids), demo.config
    )
    summary = json.loads((tmp_path / "tp.json").read_text())
    assert summary["top5"][0] == {
        "id": 2983,
        "text": "42",
        "probability": pytest.approx(float(torch.softmax(logits[-1], -1).max())),
    }
    assert summary["token_ids"] == demo_prompt and summary["processes"] == n
    assert {"model_dir", "prompt", "seconds", "token_ids", "top5"} <= set(summary)
    assert "'42'" in done.stdout and done.stdout.count("top 5 next tokens") == 1  # rank 0 alone prints


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(node_dirs, rendezvous: list[str], tmp_path) -> list[subprocess.CompletedProcess]:
    """Two torchrun launches of one process each, as two machines would start them, over loopback."""
    tag = uuid.uuid4().hex
    launches = []
    for node, ckpt_dir in enumerate(node_dirs):
        cmd = [*TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", *rendezvous, str(RUN_TP)]
        cmd += ["--save-logits", str(tmp_path / f"node{node}.pt"), "--summary", str(tmp_path / f"node{node}.json")]
        launches.append(
            subprocess.Popen(
                cmd, env=launch_env(ckpt_dir, tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
            )
        )
    results = []
    for p in launches:
        out, err = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert_all_gone(tag)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    return results


def test_two_nodes_over_loopback_c10d(demo_shards, demo, demo_prompt, demo_logits, tmp_path):
    """torchrun's c10d rendezvous, as on two machines (it hands out ranks in its own order: both see every shard)."""
    port = free_port()
    two_nodes(
        [demo_shards / "demo-2"] * 2, ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"], tmp_path
    )
    saved = [tmp_path / f"node{i}.pt" for i in range(2) if (tmp_path / f"node{i}.pt").exists()]
    assert len(saved) == 1  # rank 0, on whichever node it landed
    logits = torch.load(saved[0], weights_only=True)["logits"]
    assert int(logits[-1].argmax()) == 2983
    assert_same_predictions(logits, demo_logits, demo.config)


def test_two_nodes_each_with_only_its_own_shard(demo_shards, demo, demo_logits, tmp_path):
    """The static rendezvous (--node-rank fixes machine k's ranks): each node's folder holds params.json,
    tokenizer.model and its own consolidated.0k.pth only."""
    node_dirs = []
    for node in range(2):
        d = tmp_path / f"machine{node}"
        d.mkdir()
        for name in ("params.json", "tokenizer.model", f"consolidated.{node:02d}.pth"):
            shutil.copy(demo_shards / "demo-2" / name, d / name)
        node_dirs.append(d)
    port = free_port()
    two_nodes(node_dirs, ["--master-addr", "127.0.0.1", "--master-port", str(port)], tmp_path)
    logits = torch.load(tmp_path / "node0.pt", weights_only=True)["logits"]
    assert not (tmp_path / "node1.pt").exists()
    assert_same_predictions(logits, demo_logits, demo.config)
    assert int(logits[-1].argmax()) == 2983


# --- faults: one message from rank 0, exit code 2 for bad input, every process gone within seconds -------------


def launch_tp(ckpt_dir, n, **extra):
    """`python scripts/run/run_tp.py --nproc-per-node N`, as `make run-tp` runs it."""
    return run(
        [sys.executable, str(RUN_TP), "--nproc-per-node", str(n), "--summary", os.devnull],
        ckpt_dir,
        timeout=90,
        **extra,
    )


def assert_one_message(done, *fragments):
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.stderr.count("error: ") == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in done.stderr, f"{fragment!r} not in {done.stderr[-3000:]}"


def test_a_missing_shard_is_named_by_rank_0(demo_shards, tmp_path):
    folder = tmp_path / "demo-2"
    shutil.copytree(demo_shards / "demo-2", folder)
    (folder / "consolidated.01.pth").unlink()
    done, elapsed = launch_tp(folder, 2)
    assert_one_message(done, "rank 1: ", folder / "consolidated.01.pth", "is missing", "Copy the missing shard")
    assert elapsed < 30


@pytest.mark.parametrize("shard_count, processes", [(4, 2), (2, 4)])
def test_a_process_count_other_than_the_shard_count(demo_shards, shard_count, processes):
    done, elapsed = launch_tp(demo_shards / f"demo-{shard_count}", processes)
    assert_one_message(
        done, f"is one of {shard_count} shards", f"started {processes} processes", f"--nproc-per-node {shard_count}"
    )
    assert elapsed < 30


def test_a_bad_prompt_is_reported_once(demo_shards):
    done, _ = launch_tp(demo_shards / "demo-2", 2, LLAMA3_PROMPT="   ")
    assert_one_message(done, "The prompt is empty")


def test_a_rank_that_dies_mid_run_ends_the_run(demo_shards):
    """Rank 1 exits abruptly after layer 2: rank 0's all_reduce loses its peer, torchrun stops every process."""
    done, elapsed = launch_tp(demo_shards / "demo-2", 2, LLAMA3_TP_FAIL_AT="1:2")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "rank 1 exited with code 1" in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("run_tp: stopped") == 1
    assert "top 5 next tokens" not in done.stdout
    assert elapsed < 30


def test_a_rank_that_stops_answering_times_out(demo_shards):
    """Rank 1 hangs after layer 2: rank 0 gives up after the process group's timeout (LLAMA3_TP_TIMEOUT, here
    3 seconds), and torchrun stops rank 1."""
    done, elapsed = launch_tp(demo_shards / "demo-2", 2, LLAMA3_TP_FAIL_AT="1:2:hang", LLAMA3_TP_TIMEOUT="3")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "rank 0 lost contact" in done.stderr and "rank 0 exited with code 1" in done.stderr, done.stderr[-3000:]
    assert 3 < elapsed < 30


# --- eight processes: `make test-tp8` (eight processes and eight more for Meta's reference) ----------------------


@pytest.mark.skipif(not os.environ.get("LLAMA3_TEST_TP8"), reason="eight processes: run with `make test-tp8`")
def test_tp8_eight_shards_of_gqa4(tmp_path):
    """8 query heads and 2 key/value heads in 8 shards: one query head per rank, each key/value head stored 4 times."""
    single = synthetic.write_checkpoint(tmp_path / "gqa4", synthetic.PRESETS["gqa4"], seed=3, embedding_scale=4.0)
    ck = llama3.load_checkpoint(single)
    llama3.reshard(ck, tmp_path / "gqa4-8", 8)
    prompt = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    result, _ = torchrun_tp(tmp_path / "gqa4-8", 8, tmp_path / "tp.pt")
    single_logits = llama3.forward(ck.weights, ck.config, prompt)
    assert_same_predictions(result["logits"], single_logits, ck.config)
    assert_same_predictions(result["logits"], meta_reference(tmp_path / "gqa4-8", 8, tmp_path / "meta.pt"), ck.config)
    stop_ids = llama3.stop_token_ids(ck.tokenizer)
    assert_same_generation(result, llama3.generate(ck.weights, ck.config, prompt, NEW_TOKENS, stop_ids), ck.config)
    sharded = llama3.load_checkpoint(tmp_path / "gqa4-8")
    assert (
        result["generated_ids"]
        == llama3.generate(sharded.weights, sharded.config, prompt, NEW_TOKENS, stop_ids).token_ids
    )
