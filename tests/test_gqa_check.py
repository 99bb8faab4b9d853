"""Notebook 07's grouped-query check must catch the classic mistake: `repeat` where `repeat_interleave` belongs."""

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import llama3

NOTEBOOK = llama3.REPO_DIR / "notebooks" / "07_all_heads.ipynb"
RIGHT = "{0}_all.repeat_interleave(config.queries_per_kv_head, dim=0)"
WRONG = "{0}_all.repeat(config.queries_per_kv_head, 1, 1)"


def run_notebook(nb):
    client = NotebookClient(nb, kernel_name="llama3-from-scratch", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # fmt: skip
    client.execute(cleanup_kc=True)


def test_the_check_fails_when_repeat_interleave_is_replaced_by_repeat(demo, monkeypatch):
    assert demo.config.n_kv_heads >= 2, "with one key/value head repeat and repeat_interleave agree"
    monkeypatch.delenv("LLAMA3_DIR", raising=False)
    monkeypatch.delenv("LLAMA3_PROMPT", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    replaced = 0
    for cell in nb.cells:
        for name in ("k", "v"):
            if RIGHT.format(name) in cell.source:
                cell.source = cell.source.replace(RIGHT.format(name), WRONG.format(name))
                replaced += 1
    assert replaced == 2  # the notebook's own grouping lines were found and broken
    with pytest.raises(CellExecutionError) as info:
        run_notebook(nb)
    assert info.value.ename == "AssertionError"
    assert "kv_head_received(k_repeated) == [first_copy[g] for g in kv_head_of]" in str(info.value)
