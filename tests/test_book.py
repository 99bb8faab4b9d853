"""The book's configuration (scripts/book/): its table of contents, the links it resolves, and what
fails the build. The whole book is built by `make book` (CI runs it); here small books are built in a
temporary copy of the layout, so each failure is seen to fail."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOOK_DIR = REPO / "scripts" / "book"


def load_conf():
    spec = importlib.util.spec_from_file_location("book_conf", BOOK_DIR / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conf = load_conf()


def test_jupyterlab_anchors_name_the_same_heading():
    slugs = {"the-bf16-matmul-kernel": (3, "the-bf16-matmul-kernel", "The bf16 matmul kernel"),
             "pages-mapped-up-front": (1, "pages-mapped-up-front", "Pages mapped up front")}  # fmt: skip
    assert conf.jupyterlab_anchor("The bf16 matmul kernel") == "The-bf16-matmul-kernel"
    assert conf.heading_slug_for("The-bf16-matmul-kernel", slugs) == "the-bf16-matmul-kernel"  # JupyterLab's form
    assert conf.heading_slug_for("pages-mapped-up-front", slugs) == "pages-mapped-up-front"  # MyST's (GitHub's)
    assert conf.heading_slug_for("The-bf16-kernel", slugs) is None
    assert conf.heading_slug_for("the-bf16-matmul-kernel-", slugs) is None
    # Two headings JupyterLab cannot tell apart: neither is chosen, so the link fails loudly.
    twins = {"a-b": (1, "a-b", "A b"), "a-b-1": (2, "a-b-1", "A b")}
    assert conf.heading_slug_for("A-b", twins) is None


def test_printed_output_shows_as_in_jupyterlab():
    # A progress bar redrawn in place: its last state; a shorter redraw leaves the old line's tail.
    assert conf.resolve_carriage_returns("\rbar 0%\rbar 100%\n") == "bar 100%\n"
    assert conf.resolve_carriage_returns("loading....\rdone\nnext\r\n") == "doneing....\nnext\n"
    outputs = [
        {"output_type": "stream", "name": "stderr", "text": ["\rlayers:   0%"]},
        {"output_type": "stream", "name": "stderr", "text": "\rlayers: 100%"},
        {"output_type": "stream", "name": "stderr", "text": "\n"},
        {"output_type": "stream", "name": "stdout", "text": "a\n"},
        {"output_type": "execute_result", "data": {"text/plain": "2"}},
        {"output_type": "stream", "name": "stdout", "text": "b\n"},
    ]
    merged = conf.merge_streams(outputs)
    assert [o.get("text") for o in merged] == ["layers: 100%\n", "a\n", None, "b\n"]


def test_toc_lists_every_notebook_once_in_its_parts():
    toc = conf.read_toc()
    listed = [path for part in toc["part"] for path, _ in conf.entries(part)]
    notebooks = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob(conf.NOTEBOOK_PATTERN))
    assert sorted(p for p in listed if p.endswith(".ipynb")) == notebooks
    page = conf.render_map(toc)
    # The landing page links every page in the toc's order, and the navigation follows the same order.
    positions = [page.index(f"`{conf.doc_name(path)}`") if title is None else page.index(f"<{conf.doc_name(path)}>`")
                 for path, title in (e for part in toc["part"] for e in conf.entries(part))]  # fmt: skip
    assert positions == sorted(positions)
    assert page.count("```{toctree}") == len(toc["part"])
    for part in toc["part"]:
        assert f":caption: {part['caption']}" in page


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('"notebooks/02_b.ipynb",', ""), "in the repository but in no part: notebooks/02_b.ipynb"),
        (lambda t: t.replace('"notebooks/02_b.ipynb",', '"notebooks/02_b.ipynb", "notebooks/02_b.ipynb",'),
         "listed twice: notebooks/02_b.ipynb"),
        (lambda t: t.replace('"notebooks/02_b.ipynb",', '"notebooks/02_b.ipynb", "notebooks/03_c.ipynb",'),
         "listed but missing: notebooks/03_c.ipynb"),
    ],
)  # fmt: skip
def test_toc_problems_are_named(tmp_path, edit, message):
    repo = small_repo(tmp_path)
    toc = repo / "scripts" / "book" / "toc.toml"
    toc.write_text(edit(toc.read_text()))
    with pytest.raises(Exception, match=message):
        conf.read_toc(toc, repo)


# -- Small books, built as `make book` builds the real one -------------------------------------------


def notebook(*markdown: str, output: dict | None = None) -> dict:
    """Markdown cells, then one executed code cell with `output` (by default the text "2")."""
    cells = [
        {"cell_type": "markdown", "id": f"m{i}", "metadata": {}, "source": text} for i, text in enumerate(markdown)
    ]
    cells.append({"cell_type": "code", "id": "c", "metadata": {}, "execution_count": 1, "source": "1 + 1",
                  "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                               "data": output or {"text/plain": "2"}}]})  # fmt: skip
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python", "pygments_lexer": "ipython3"}}  # fmt: skip
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def small_repo(root: Path, links_from_a: tuple[str, ...] = ("02_b.ipynb#The-second-heading",)) -> Path:
    """A repository in miniature: scripts/book/ as committed but for its landing page and toc, two
    notebooks, a README, an image."""
    repo = root / "repo"
    shutil.copytree(BOOK_DIR, repo / "scripts" / "book", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "notebooks").mkdir()
    (repo / "images").mkdir()
    shutil.copy(REPO / "images" / "09_whole_model.svg", repo / "images")
    (repo / "scripts" / "book" / "index.md").write_text(f"# A small book\n\n{conf.MAP_MARKER}\n\nThe end.\n")
    (repo / "README.md").write_text("# The project\n\n## Setting up\n\nSee [the first notebook](notebooks/01_a.ipynb), "
                                    "made by [build.py](scripts/book/build.py).\n")  # fmt: skip
    onward = "\n".join(f"On to [B]({link})." for link in links_from_a)
    a = notebook("# 01 · A\n\nFirst, [the README](../README.md#setting-up).", f"## Next\n\n{onward}")
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
              "text/plain": "IntSlider(value=0)"}  # fmt: skip
    b = notebook(
        "# 02 · B\n\nThe second, $\\sqrt{\\text{head\\_dim}}$.",
        "## The second heading\n\nHere; [up](#02-·-B).",
        output=widget,
    )
    (repo / "notebooks" / "01_a.ipynb").write_text(json.dumps(a))
    (repo / "notebooks" / "02_b.ipynb").write_text(json.dumps(b))
    (repo / "scripts" / "book" / "toc.toml").write_text(
        'map_image = "images/09_whole_model.svg"\n'
        '[[part]]\ncaption = "Main path"\ntitle = "Main"\nfiles = [\n"notebooks/01_a.ipynb",\n"notebooks/02_b.ipynb",\n]\n'
        '[[part]]\ncaption = "The project"\ntitle = "The project"\nfiles = [{ path = "README.md", title = "README" }]\n'
    )  # fmt: skip
    return repo


def build(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "scripts" / "book" / "build.py")], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_small_book_resolves_links_as_jupyterlab_writes_them(tmp_path):
    repo = small_repo(tmp_path)
    result = build(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    out = repo / "build" / "book"
    assert (out / ".built").exists()
    a = (out / "notebooks" / "01_a.html").read_text()
    assert 'href="02_b.html#the-second-heading"' in a  # JupyterLab's anchor, resolved to the heading
    assert 'href="../README.html#setting-up"' in a
    assert "Run it in JupyterLab" in a and 'href="../_sources/notebooks/01_a.ipynb"' in a  # the hint, the download
    assert (out / "_sources" / "notebooks" / "01_a.ipynb").read_bytes() == (
        repo / "notebooks" / "01_a.ipynb"
    ).read_bytes()
    b = (out / "notebooks" / "02_b.html").read_text()
    assert 'href="#b"' in b  # a link within the page, with JupyterLab's anchor of "02 · B"
    assert "its sliders work in JupyterLab" in b and "widget-view+json" not in b and "IntSlider" not in b
    assert "<msqrt><mrow><mtext>head_dim</mtext>" in b and not re.search(
        r"<script[^>]*mathjax", b, re.I
    )  # MathML written now: no script
    readme = (out / "README.html").read_text()
    assert "build.py" in readme and "build.py</a>" not in readme  # a repository file, not a page: text, no link
    index = (out / "index.html").read_text()
    assert 'href="notebooks/01_a.html"' in index and 'href="README.html"' in index


BROKEN = {  # link from notebooks/01_a.ipynb: what the build's message must name
    "#Next-heading": "Next-heading",
    "02_b.ipynb#No-such-heading": "No-such-heading",
    "03_c.ipynb": "03_c.ipynb",
    "../READ_ME.md#x": "READ_ME",
    "../scripts/book/no_such_file.py": "no_such_file.py",
}


def test_small_book_fails_on_each_broken_link(tmp_path):
    repo = small_repo(tmp_path, links_from_a=tuple(BROKEN))
    result = build(repo)
    assert result.returncode != 0
    for link, complaint in BROKEN.items():
        assert complaint in result.stderr, (link, result.stderr)
    assert not (repo / "build" / "book" / ".built").exists()
