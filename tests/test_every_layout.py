"""Every notebook runs, top to bottom in a fresh kernel, on every layout Meta and Hugging Face ship.

nbval compares the stored outputs on the demo checkpoint in Meta's single-file layout. Here the same
notebooks run, without comparison, with LLAMA3_DIR pointing at the demo cut into Meta's model-parallel
shards (2 and 4; 4 stores each key/value head twice, like Llama 3.1 405B's 16-shard release), at a random
8-query-head model in 8 shards (the demo's 4 query heads cannot be cut 8 ways: Meta's code gives each rank
n_heads // 8 of them), at the demo in Hugging Face's layout (one safetensors file, and several with an
index), at a Llama 3.2-style miniature with a tied output matrix in Hugging Face's layout, and at a real pretrained
model whose tokenizer is not Llama 3's (SmolLM2-135M, `make smollm2`) in Meta's layout and in Hugging Face's.
A notebook fails here on any error, including its own asserts. The notebook about the real model reads it
whatever LLAMA3_DIR says, so it runs once, under nbval, not here.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import llama3
import make_checkpoint
import write_hf
import write_shards

ONE_MODEL_NOTEBOOKS = {"16_a_real_model.ipynb"}  # reads build/smollm2-135m whatever LLAMA3_DIR says
NOTEBOOKS = [p for p in sorted((llama3.REPO_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb")) if p.name not in ONE_MODEL_NOTEBOOKS]
LAYOUTS = [
    "demo-2-shards", "demo-4-shards", "gqa4-8-shards", "demo-hf", "demo-hf-sharded", "llama3.2-tied-hf",
    "smollm2", "smollm2-hf",
]  # fmt: skip
REAL_MODEL_DIRS = {"smollm2": llama3.SMOLLM2_DIR, "smollm2-hf": llama3.SMOLLM2_HF_DIR}  # written by make smollm2


def to_hugging_face(meta_dir: Path, out: Path, shard_bytes: int | None) -> None:
    weights, params = write_hf.read_meta_checkpoint(meta_dir)
    release = llama3.release_from_params(params)
    write_hf.write_hf_checkpoint(weights, params, release, out, meta_dir / "tokenizer.model", shard_bytes)


def write_layout(name: str, root: Path) -> Path:
    if name in REAL_MODEL_DIRS:
        return REAL_MODEL_DIRS[name]
    out = root / name
    if name.startswith("demo-") and name.endswith("-shards"):
        write_shards.reshard(llama3.DEMO_DIR, out, int(name.split("-")[1]))
    elif name == "gqa4-8-shards":
        single = make_checkpoint.write_checkpoint(root / "gqa4", make_checkpoint.PRESETS["gqa4"], seed=3, embedding_scale=4.0)
        write_shards.reshard(single, out, 8)
    elif name in ("demo-hf", "demo-hf-sharded"):
        to_hugging_face(llama3.DEMO_DIR, out, shard_bytes=(16 << 20) if name.endswith("sharded") else None)
    elif name == "llama3.2-tied-hf":
        single = make_checkpoint.write_checkpoint(
            root / "tied", make_checkpoint.PRESETS["llama3.2-1b-mini"], seed=4, embedding_scale=4.0, tied=True
        )
        to_hugging_face(single, out, shard_bytes=None)
    return out


def run_notebook(path: Path, model_dir: Path) -> str | None:
    """Execute one notebook in a fresh kernel on model_dir; None, or the error."""
    os.environ |= {"LLAMA3_DIR": str(model_dir), "LLAMA3_MAX_NEW_TOKENS": "4"}  # the generation loops: a few tokens
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="llama3-from-scratch", timeout=900, resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:
        return f"{path.name}: {e.ename}: {str(e.evalue)[:500]}"
    return None


@pytest.fixture(scope="module")
def layouts_root(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_notebook_runs(layout, layouts_root, demo):
    model_dir = write_layout(layout, layouts_root)
    ck = llama3.load_checkpoint(model_dir)  # the layout is read as what it is
    expected = "meta" if layout == "smollm2" else "meta-sharded"
    assert ck.layout == ("huggingface" if layout.endswith("hf") or layout.endswith("hf-sharded") else expected)
    with ProcessPoolExecutor(2) as pool:  # two kernels at a time
        errors = [e for e in pool.map(run_notebook, NOTEBOOKS, [model_dir] * len(NOTEBOOKS)) if e]
    assert not errors, "\n".join(errors)
