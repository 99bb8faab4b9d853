"""The book (`make book`, build/book/) in a real browser: Debian's Chromium driven by Playwright.

Opened from the files as a reader does after `make book` (file://, no server). Every request the
pages make is recorded, and one that leaves the book's folder fails the test: the book must read
offline. Screenshots go to build/ui/book_*.png.
"""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOK = REPO / "build" / "book"
SHOTS = REPO / "build" / "ui"
TOC_PARTS = ["Main path", "Going further", "For engineers"]
MAIN_PATH_PAGE = "notebooks/06_scores_mask_softmax"  # the causal mask: heatmaps before and after


def url(doc: str) -> str:
    return (BOOK / f"{doc}.html").as_uri()


@pytest.fixture(scope="module")
def page(chromium):
    if not (BOOK / ".built").exists():
        pytest.fail(f"{BOOK} has not been built: run `make book` (make test-ui does)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = chromium.new_page()
    outside = []
    page.on("request", lambda request: None if request.url.startswith(BOOK.as_uri()) or request.url.startswith("data:")
            else outside.append(request.url))  # fmt: skip
    yield page
    assert not outside, f"the book fetched files from outside build/book: {outside}"


def figures_in_notebook(doc: str) -> int:
    """How many pictures the committed notebook holds: image outputs and Markdown images."""
    cells = json.loads((REPO / f"{doc}.ipynb").read_text())["cells"]
    outputs = sum(any(kind.startswith("image/") for kind in output.get("data", {}))
                  for cell in cells if cell["cell_type"] == "code" for output in cell["outputs"])  # fmt: skip
    markdown = sum(
        len(re.findall(r"!\[", "".join(cell["source"]))) for cell in cells if cell["cell_type"] == "markdown"
    )
    return outputs + markdown


def loaded_images(page) -> list[dict]:
    return page.locator("article img").evaluate_all(
        "imgs => imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}))"
    )


def test_landing_page(page):
    page.goto(url("index"))
    assert page.locator("article h1").inner_text().startswith("Llama 3 from scratch")
    # The map: the whole-model picture, and every part with its notebooks, in the sidebar as well.
    images = loaded_images(page)
    assert images and all(i["complete"] and i["width"] > 0 for i in images), images
    headings = page.locator("article h3").all_inner_texts()
    assert [h for h in headings if h.startswith(("The main path", "Going further", "For engineers"))], headings
    captions = [c.strip() for c in page.locator(".bd-sidebar-primary p.caption").all_inner_texts()]
    assert captions[:3] == TOC_PARTS, captions
    assert page.locator("article a[href='notebooks/01_checkpoint.html']").count() >= 1
    assert "make lab" in page.locator("article").inner_text()
    page.screenshot(path=str(SHOTS / "book_1_landing.png"), full_page=True)


def test_main_path_page_with_figures(page):
    page.goto(url(MAIN_PATH_PAGE))
    page.wait_for_load_state("load")
    images = loaded_images(page)
    expected = figures_in_notebook(MAIN_PATH_PAGE)
    assert len(images) >= expected, f"{len(images)} images on the page, {expected} in the notebook"
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    # The hint to run it, with the notebook itself to download.
    hint = page.locator(".run-hint")
    assert "make setup" in hint.inner_text() and "make lab" in hint.inner_text()
    href = hint.locator("a").get_attribute("href")
    assert (BOOK / "notebooks" / href).resolve() == (BOOK / "_sources" / f"{MAIN_PATH_PAGE}.ipynb").resolve()
    assert (BOOK / "_sources" / f"{MAIN_PATH_PAGE}.ipynb").read_bytes() == (
        REPO / f"{MAIN_PATH_PAGE}.ipynb"
    ).read_bytes()
    # The theme's download button at the top of the page offers the same file.
    assert page.locator(f".article-header-buttons a[href='{href}']").count() == 1
    page.screenshot(path=str(SHOTS / "book_2_main_path_top.png"))
    first_figure = page.locator("article .cell_output img").first
    first_figure.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "book_3_main_path_figure.png"))


def test_search_finds_rope(page):
    page.goto(url("search") + "?q=RoPE")
    results = page.locator("ul.search li a")
    results.first.wait_for(timeout=30_000)
    hrefs = results.evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert any("05_rope" in href for href in hrefs), hrefs
    page.screenshot(path=str(SHOTS / "book_4_search_rope.png"))


def test_link_to_the_next_notebook(page):
    page.goto(url("notebooks/05_rope"))
    # The notebook's own "Next:" link (as written in the notebook, 06_scores_mask_softmax.ipynb).
    link = page.locator("article a", has_text="06 · Scores, the causal mask and softmax").last
    link.click()
    page.wait_for_url("**/notebooks/06_scores_mask_softmax.html")
    assert page.locator("article h1").inner_text().startswith("06 · Scores")
    # A link with JupyterLab's heading anchor (#Pages-mapped-up-front) lands on that heading.
    page.goto(url("notebooks/01_checkpoint"))
    page.locator("article a[href*='19_appendix_running_fast_on_a_cpu.html#']").first.click()
    page.wait_for_url("**/19_appendix_running_fast_on_a_cpu.html#pages-mapped-up-front")
    heading = page.locator("#pages-mapped-up-front h2, h2#pages-mapped-up-front").first
    assert heading.inner_text().startswith("Pages mapped up front")
    assert heading.evaluate("h => { const r = h.getBoundingClientRect(); return r.top >= 0 && r.top < innerHeight; }")
    page.screenshot(path=str(SHOTS / "book_5_followed_anchor.png"))


def test_widget_page_says_where_sliders_work(page):
    page.goto(url("notebooks/10_attention_explorer"))
    note = page.locator(".widget-note")
    assert note.count() == 1
    assert "JupyterLab" in note.inner_text()
    assert page.locator("script[type='application/vnd.jupyter.widget-view+json']").count() == 0
    note.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "book_6_widget_note.png"))
