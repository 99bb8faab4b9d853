"""Sphinx configuration of the book: the committed notebooks and the README as one static site.

`make book` runs scripts/book/build.py, which lays out a source folder holding the repository's
notebooks/, images/ and README.md side by side (as they are in the repository) with this folder's
index.md, and builds it with this configuration. Nothing is executed: myst-nb renders the outputs
the notebooks stored. The parts of the book, in reading order, come from toc.toml beside this file.

Five small additions, each in `setup` below:
- the landing page's map and the book's table of contents, both made from toc.toml;
- links between notebooks, and within one, keep the anchors JupyterLab gives headings (`#The-bf16-matmul-kernel`,
  the heading's text with spaces turned into hyphens); here they are resolved to the same headings;
- a widget's output (the attention explorer) becomes one line saying its sliders work in JupyterLab;
- each notebook page says how to run it in JupyterLab and links to the notebook itself;
- printed output is shown as JupyterLab shows it: a progress bar redrawn with carriage returns is its
  last state, not one line per redraw.
Math is written as MathML when the book is built, so no script is fetched to show it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from docutils import nodes
from docutils.transforms import Transform
from sphinx import addnodes
from sphinx.errors import ConfigError
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.osutil import relative_uri

BOOK_DIR = Path(__file__).resolve().parent
REPO = BOOK_DIR.parents[1]
TOC_FILE = BOOK_DIR / "toc.toml"
NOTEBOOK_PATTERN = "notebooks/[0-9][0-9]_*.ipynb"
MAP_MARKER = "<!-- book-map -->"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# -- Sphinx -------------------------------------------------------------------------------------

project = "Llama 3 from scratch"
author = "the llama3-from-scratch authors"
root_doc = "index"
include_patterns = ["index.md", "README.md", NOTEBOOK_PATTERN]
extensions = ["myst_nb"]
html_theme = "sphinx_book_theme"
html_title = "Llama 3 from scratch"
html_static_path = ["static"]
html_css_files = ["book.css"]
html_copy_source = True
html_sourcelink_suffix = ""  # the download button hands out notebooks/NN_name.ipynb itself
html_last_updated_fmt = None
html_math_renderer = "mathml"
smartquotes = False  # quotes as the notebooks write them ("... everything is " keeps its closing quote)
html_theme_options = {
    "home_page_in_toc": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "navbar_persistent": [],
}

# -- MyST and myst-nb ----------------------------------------------------------------------------

nb_execution_mode = "off"  # the stored outputs, as committed
nb_ipywidgets_js = {}  # no widget manager fetched from a CDN: widgets get the note below instead
nb_merge_streams = False  # merged below as JupyterLab shows them (myst-nb's merge puts each piece on a line)
myst_enable_extensions = ["dollarmath", "html_image"]
myst_heading_anchors = 6  # every heading gets the GitHub-style anchor the README's links use


# -- The table of contents (toc.toml) ------------------------------------------------------------


def entries(part: dict) -> list[tuple[str, str | None]]:
    """A part's files as (repository path, title or None): an entry is a path, or {path, title} to
    show another title than the page's own."""
    return [(e, None) if isinstance(e, str) else (e["path"], e.get("title")) for e in part["files"]]


def doc_name(path: str) -> str:
    """The Sphinx document name of a repository path: notebooks/05_rope.ipynb -> notebooks/05_rope."""
    return path.rsplit(".", 1)[0]


def read_toc(toc_file: Path = TOC_FILE, repo: Path = REPO) -> dict:
    """toc.toml, checked: every file exists, none is listed twice, and every notebook is listed."""
    toc = tomllib.loads(toc_file.read_text())
    for part in toc.get("part", []):
        for key in ("caption", "title", "files"):
            if key not in part:
                raise ConfigError(f"{toc_file}: a [[part]] has no {key!r}; every part needs caption, title and files")
    listed = [path for part in toc.get("part", []) for path, _ in entries(part)]
    if not listed:
        raise ConfigError(f"{toc_file}: no [[part]] with files; list the notebooks there in reading order")
    notebooks = sorted(p.relative_to(repo).as_posix() for p in repo.glob(NOTEBOOK_PATTERN))
    missing = [path for path in listed if not (repo / path).is_file()]
    twice = sorted({path for path in listed if listed.count(path) > 1})
    left_out = [path for path in notebooks if path not in listed]
    problems = [f"listed but missing: {', '.join(missing)}"] * bool(missing)
    problems += [f"listed twice: {', '.join(twice)}"] * bool(twice)
    problems += [f"in the repository but in no part: {', '.join(left_out)}"] * bool(left_out)
    if not (repo / toc.get("map_image", "")).is_file():
        problems.append(f"map_image {toc.get('map_image')!r} is not a file of the repository")
    if problems:
        raise ConfigError(f"{toc_file}: " + "; ".join(problems) + ". Edit the parts there.")
    return toc


def render_map(toc: dict) -> str:
    """The landing page's map in MyST Markdown: the picture, each part with its pages linked, and
    one hidden toctree per part (the book's navigation, in the same order)."""
    lines = ["## The map", "", f"![{toc.get('map_alt', '')}]({toc['map_image']})", ""]
    for part in toc["part"]:
        pages = [f"{title} <{doc_name(path)}>" if title else doc_name(path) for path, title in entries(part)]
        lines += [f"### {part['title']}", "", part.get("about", ""), ""]
        lines += [f"- {{doc}}`{page}`" for page in pages]
        lines += ["", "```{toctree}", ":hidden:", f":caption: {part['caption']}", "", *pages, "```", ""]
    return "\n".join(lines)


def insert_map(app, docname: str, source: list[str]) -> None:
    if docname != app.config.root_doc:
        return
    if MAP_MARKER not in source[0]:
        raise ConfigError(f"{BOOK_DIR / 'index.md'} has no line {MAP_MARKER!r} where the map goes")
    source[0] = source[0].replace(MAP_MARKER, render_map(read_toc()))


# -- Links with JupyterLab's heading anchors ------------------------------------------------------


def jupyterlab_anchor(heading_text: str) -> str:
    """The id JupyterLab gives a Markdown heading: its text with each space turned into a hyphen."""
    return heading_text.replace(" ", "-")


def heading_slug_for(anchor: str, slugs: dict[str, tuple]) -> str | None:
    """The MyST slug of the heading that `anchor` names, in MyST's form or in JupyterLab's; None if
    no heading of the document has it. `slugs` is MyST's {slug: (line, id, heading text)}."""
    if anchor in slugs:
        return anchor
    found = [slug for slug, (_, _, text) in slugs.items() if jupyterlab_anchor(text) == anchor]
    return found[0] if len(found) == 1 else None


class JupyterLabAnchors(SphinxPostTransform):
    """Before MyST resolves `[text](NN_name.ipynb#Some-Heading)`, turn JupyterLab's anchor into the
    heading's MyST slug. An anchor that names no heading is left alone, and MyST's warning about it
    fails the build."""

    default_priority = 8  # before MyST's reference resolver (9)

    def run(self, **kwargs) -> None:
        for node in self.document.findall(addnodes.pending_xref):
            anchor, target = node.get("reftargetid"), node.get("reftarget")
            if node.get("reftype") != "myst" or not anchor or target not in self.env.all_docs:
                continue
            slug = heading_slug_for(anchor, self.env.metadata[target].get("myst_slugs", {}))
            if slug is not None:
                node["reftargetid"] = slug


class JupyterLabLocalAnchors(Transform):
    """The same for a link within the page, `[text](#Some-Heading)`, before MyST resolves it (879)."""

    default_priority = 878

    def apply(self, **kwargs) -> None:
        slugs = getattr(self.document, "myst_slugs", {})
        for node in self.document.findall(nodes.reference):
            if node.get("id_link") and node.get("refuri", "").startswith("#"):
                slug = heading_slug_for(node["refuri"][1:], slugs)
                if slug is not None:
                    node["refuri"] = f"#{slug}"


class RepositoryPaths(SphinxPostTransform):
    """A link to a file or folder of the repository that is not a page of the book (the README's
    `scripts/demo_corpus.py`, `notebooks/llama3/`) keeps its text and loses its link: the book has no
    copy to point at. A path that does not exist in the repository is left alone, and fails the build."""

    default_priority = 8

    def run(self, **kwargs) -> None:
        docname = self.env.docname
        folder = REPO / Path(docname).parent  # the book's folders mirror the repository's
        for node in list(self.document.findall(addnodes.pending_xref)):
            target = node.get("reftarget", "")
            if node.get("reftype") != "myst" or node.get("refdomain") or not target or "://" in target:
                continue
            path = (folder / target.split("#")[0]).resolve()
            if path.is_relative_to(REPO) and path.exists():
                node.replace_self(node.children)


# -- Widgets -------------------------------------------------------------------------------------

WIDGET_NOTE = (
    "This output is an interactive widget: its sliders work in JupyterLab (`make lab`, then this notebook), "
    "where a kernel runs. The book shows the notebook's static view instead, drawn by the cells above."
)


class WidgetNote(SphinxPostTransform):
    """A stored widget output cannot move without a kernel: replace it with a note (before myst-nb
    picks one output format per bundle, 4)."""

    default_priority = 3

    def run(self, **kwargs) -> None:
        for bundle in list(self.document.findall(nodes.container)):
            if bundle.get("nb_element") != "mime_bundle":
                continue
            if any(child.get("mime_type") == WIDGET_VIEW for child in bundle.children):
                note = nodes.note()
                note += nodes.paragraph()
                for i, piece in enumerate(re.split(r"`([^`]*)`", WIDGET_NOTE)):
                    note[0] += nodes.literal(piece, piece) if i % 2 else nodes.Text(piece)
                note["classes"].append("widget-note")
                bundle.replace_self(note)


# -- "Run it in JupyterLab" on every notebook page -----------------------------------------------


def add_run_hint(app, doctree: nodes.document) -> None:
    docname = app.env.docname
    source = app.env.doc2path(docname)
    if Path(source).suffix != ".ipynb":
        return
    path = f"{docname}.ipynb"
    download = relative_uri(app.builder.get_target_uri(docname), f"_sources/{path}")
    hint = nodes.admonition(classes=["tip", "run-hint"])
    hint += nodes.title("", "Run it in JupyterLab")
    body = nodes.paragraph()
    body += [
        nodes.Text("This page is the notebook "),
        nodes.reference("", "", nodes.literal(path, path), refuri=download, classes=["run-hint-download"]),
        nodes.Text(" with its stored outputs. To run it yourself, in a clone of the repository: "),
        nodes.literal("make setup", "make setup"),
        nodes.Text(", then "),
        nodes.literal("make lab", "make lab"),
        nodes.Text(", and open it there."),
    ]
    hint += body
    section = next(doctree.findall(nodes.section), None)
    if section is None or not isinstance(section[0], nodes.title):
        raise ConfigError(f"{source}: the notebook does not start with a title (a '# NN · Title' cell)")
    section.insert(1, hint)


# -- Printed output as JupyterLab shows it -------------------------------------------------------


def resolve_carriage_returns(text: str) -> str:
    """What a terminal (and JupyterLab) shows of `text`: after a carriage return the line is written
    over from its start, so a progress bar redrawn in place shows its last state."""
    lines = []
    for line in re.sub(r"\r+\n", "\n", text).split("\n"):
        shown = ""
        for piece in line.split("\r"):
            shown = piece + shown[len(piece) :]
        lines.append(shown)
    return "\n".join(lines)


def merge_streams(outputs: list[dict]) -> list[dict]:
    """Consecutive stream outputs of the same name joined into one, as JupyterLab joins them, with
    their carriage returns resolved; other outputs unchanged, in their order."""
    merged: list[dict] = []
    for output in outputs:
        if output.get("output_type") != "stream":
            merged.append(output)
            continue
        text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
        if merged and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == output["name"]:
            merged[-1]["text"] += text
        else:
            merged.append({**output, "text": text})
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = resolve_carriage_returns(output["text"])
    return merged


def show_streams_as_jupyterlab(app, docname: str, source: list[str]) -> None:
    if Path(app.env.doc2path(docname)).suffix != ".ipynb":
        return
    notebook = json.loads(source[0])
    for cell in notebook["cells"]:
        if cell.get("outputs"):
            cell["outputs"] = merge_streams(cell["outputs"])
    source[0] = json.dumps(notebook)


# -- Math as MathML ------------------------------------------------------------------------------


def _unescaped_text(match: re.Match) -> str:
    """latex2mathml keeps the backslash of an escaped character in \\text{...} (head\\_dim): drop it."""
    return "<mtext>" + re.sub(r"\\([_%&#$])", r"\1", match[1]) + "</mtext>"


def _mathml(self, node: nodes.Element, display: str) -> None:
    from latex2mathml.converter import convert

    latex = node.astext()
    try:
        mathml = convert(latex, display=display)
    except Exception as error:  # latex2mathml raises its own exception types
        raise ConfigError(f"{node.source}: cannot write {latex!r} as MathML ({error})") from error
    mathml = re.sub(r"<mtext>(.*?)</mtext>", _unescaped_text, mathml)
    tag = "div" if display == "block" else "span"
    self.body.append(f'<{tag} class="math">{mathml}</{tag}>')
    raise nodes.SkipNode


def visit_inline_math(self, node):
    _mathml(self, node, "inline")


def visit_block_math(self, node):
    _mathml(self, node, "block")


def setup(app):
    read_toc()  # a broken toc.toml stops the build before anything is read
    app.connect("source-read", insert_map)
    app.connect("source-read", show_streams_as_jupyterlab)
    app.connect("doctree-read", add_run_hint)
    app.add_post_transform(JupyterLabAnchors)
    app.add_transform(JupyterLabLocalAnchors)
    app.add_post_transform(RepositoryPaths)
    app.add_post_transform(WidgetNote)
    app.add_html_math_renderer("mathml", (visit_inline_math, None), (visit_block_math, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
