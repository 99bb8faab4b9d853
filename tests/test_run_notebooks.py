"""`make run`'s runner: executes notebooks in fresh kernels and reads the answer from the last one."""

import json
import os
import subprocess
import sys

import llama3


def test_runner_reports_the_answer(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA3_DIR", "LLAMA3_PROMPT")}
    result = subprocess.run(
        [sys.executable, str(llama3.REPO_DIR / "scripts" / "run" / "run_notebooks.py"),
         str(llama3.REPO_DIR / "notebooks" / "09_all_layers.ipynb")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((llama3.REPO_DIR / "build" / "run-summary.json").read_text())
    assert summary["prompt"] == llama3.DEFAULT_PROMPT
    assert summary["token_ids"][:2] == [128000, 1820] and len(summary["token_ids"]) == 17
    assert [t["id"] for t in summary["top5"]][0] == 2983 and summary["top5"][0]["text"] == "42"
    assert summary["top5"] == sorted(summary["top5"], key=lambda t: -t["probability"])
    assert set(summary["seconds"]) == {"09_all_layers.ipynb"}
    assert "'42'" in result.stdout and "tokens: 17" in result.stdout
    assert (llama3.REPO_DIR / "build" / "html" / "09_all_layers.html").exists()
