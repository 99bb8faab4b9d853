"""Every layout Meta and Hugging Face ship, through the notebooks a layout can change (`make test-layouts`).

A layout changes how weights are read (the files, their pages, the tokenizer beside them) and how a stored
weight multiplies (`x @ w.T` shard by shard, or with Hugging Face's rows put back in Meta's order, and
indexing a stored weight for a drawing). So each notebook that reads files or touches stored weights
itself runs, top to bottom in a fresh kernel without comparing outputs, with LLAMA3_DIR at:

- the demo cut into Meta's model-parallel shards (2; and 4, which stores each key/value head twice, like
  Llama 3.1 405B's 16-shard release), and a random 8-query-head model in 8 shards (the demo's 4 query
  heads cannot be cut 8 ways);
- the demo in Hugging Face's layout, one safetensors file and several with an index; a Llama 3.2-style
  miniature with a tied output matrix; and a folder whose files disagree on the release, as folders
  written by other code do: a Llama 3.1 config.json (rope_scaling factor 8) beside a tokenizer.json with
  Llama 3's special-token names (the config's release decides, checkpoint.load_checkpoint);
- a real pretrained model whose tokenizer is not Llama 3's (SmolLM2-135M, `make smollm2`) in Meta's layout and
  in Hugging Face's. The notebook about the real model (16) reads it whatever LLAMA3_DIR says, so it runs
  once, under nbval, not here.

The notebooks left out only call the package's forward pass and generation loop, which the parity tests
(tests/test_layouts.py) check on every layout against Meta's reference and transformers: 06 (scores,
mask, softmax on one head), 12 (the key/value cache loop) and 15 (training at the demo's shape).
A notebook fails here on any error, including its own asserts.
"""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import llama3
from llama3.tools import synthetic

NOTEBOOKS = sorted(
    p for p in (llama3.REPO_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb") if p.name[:2] not in {"06", "12", "15", "16"}
)
LAYOUTS = [
    "demo-2-shards",
    "demo-4-shards",
    "gqa4-8-shards",
    "demo-hf",
    "demo-hf-sharded",
    "llama3.2-tied-hf",
    "hf-3.1-config-llama3-tokenizer",
    "smollm2",
    "smollm2-hf",
]
REAL_MODEL_DIRS = {"smollm2": llama3.SMOLLM2_DIR, "smollm2-hf": llama3.SMOLLM2_HF_DIR}  # written by make smollm2


def write_layout(name: str, root: Path) -> Path:
    if name in REAL_MODEL_DIRS:
        return REAL_MODEL_DIRS[name]
    out = root / name
    if name.startswith("demo-") and name.endswith("-shards"):
        llama3.reshard(llama3.DEMO_DIR, out, int(name.split("-")[1]))
    elif name == "gqa4-8-shards":
        single = synthetic.write_checkpoint(root / "gqa4", synthetic.PRESETS["gqa4"], seed=3, embedding_scale=4.0)
        llama3.reshard(single, out, 8)
    elif name in ("demo-hf", "demo-hf-sharded"):
        llama3.to_hugging_face(llama3.DEMO_DIR, out, shard_bytes=(16 << 20) if name.endswith("sharded") else None)
    elif name == "llama3.2-tied-hf":
        params = synthetic.PRESETS["llama3.2-1b-mini"]
        synthetic.random_hf_checkpoint(out, params, seed=4, embedding_scale=4.0, tied=True)
    elif name == "hf-3.1-config-llama3-tokenizer":
        llama3.to_hugging_face(llama3.DEMO_DIR, out)  # Llama 3's config.json and tokenizer.json
        config = json.loads((out / "config.json").read_text())
        config["rope_scaling"] = {
            "factor": llama3.ROPE_SCALE_FACTORS["3.1"], "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3",
        }  # fmt: skip
        (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def layouts_root(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


@pytest.fixture(scope="session")
def layout_dirs(layouts_root):
    """Each layout written once per test process, when a test first asks for it."""
    written = {}

    def get(name: str) -> Path:
        if name not in written:
            written[name] = write_layout(name, layouts_root)
        return written[name]

    return get


def test_mixed_release_folder_is_read_as_its_config_says(layout_dirs):
    ck = llama3.load_checkpoint(layout_dirs("hf-3.1-config-llama3-tokenizer"))
    assert ck.release == "3.1" and ck.tokenizer.release == "3.1"
    assert "<|eom_id|>" not in ck.tokenizer.special_tokens_set  # the file's own names: Llama 3's
    assert llama3.stop_token_ids(ck.tokenizer) == [128001, 128008, 128009]  # 3.1's stop tokens, by id
    assert "Llama 3.1's rules apply" in llama3.describe(ck)


@pytest.mark.parametrize(
    "layout, notebook",
    [pytest.param(layout, nb, marks=pytest.mark.xdist_group(layout), id=f"{layout}-{nb.name[:2]}")
     for layout in LAYOUTS for nb in NOTEBOOKS],
)  # fmt: skip
def test_notebook_runs(layout, notebook, layout_dirs, monkeypatch):
    monkeypatch.setenv("LLAMA3_DIR", str(layout_dirs(layout)))  # the kernel inherits this process's environment
    monkeypatch.setenv("LLAMA3_MAX_NEW_TOKENS", "4")  # the generation loops: a few tokens
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, kernel_name="llama3-from-scratch", timeout=900, resources={"metadata": {"path": str(notebook.parent)}}
    )
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{notebook.name} on {layout}: {e.ename}: {str(e.evalue)[:800]}")
