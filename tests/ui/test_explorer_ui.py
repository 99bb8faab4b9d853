"""Notebook 10 in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

Runs all cells of a temporary copy of the explorer notebook (autosave off, so nothing is written
back), moves the layer and head sliders with the keyboard, clicks a head in the grid, and checks
that the figure changes each time. Screenshots go to build/ui/. Every wait is bounded.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "10_attention_explorer.ipynb"
SHOTS = REPO / "build" / "ui"
FIGURE = "img.explorer-figure"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a temporary copy of the notebook; yields its URL, then stops it."""
    root = tmp_path_factory.mktemp("lab")
    committed = NOTEBOOK.read_bytes()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = root / ".settings" / "@jupyterlab"
    for plugin, value in [
        ("docmanager-extension/plugin", '{"autosave": false}'),  # never write back
        ("apputils-extension/notification", '{"fetchNews": "false", "checkForUpdates": false}'),
    ]:
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / plugin).with_suffix(".jupyterlab-settings").write_text(value)
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA3_DIR", "LLAMA3_PROMPT")}
    env |= {
        "PYTHONPATH": str(REPO / "notebooks"),  # `import llama3` from the copy; the demo path stays the repo's
        "JUPYTER_CONFIG_DIR": str(root / ".config"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
    }
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={root / '.settings'}", f"--LabApp.workspaces_dir={root / '.workspaces'}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(root / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"{url}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
    assert NOTEBOOK.read_bytes() == committed, "the committed notebook was written to"


@pytest.fixture(scope="module")
def page(lab, chromium):
    page = chromium.new_page()
    page.goto(lab, wait_until="domcontentloaded")
    return page


def figure_bytes(page) -> bytes:
    return page.locator(FIGURE).screenshot()


def wait_for_new_figure(page, before_src: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        src = page.locator(FIGURE).get_attribute("src")
        if src and src != before_src:
            page.wait_for_timeout(300)  # let the browser paint the new image
            return src
        page.wait_for_timeout(100)
    pytest.fail("the explorer's figure did not change")


def slider_value(page, name: str) -> str:
    return page.locator(f".explorer-{name} .widget-readout").inner_text().strip()


def test_explorer_runs_and_responds(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_selector(".jp-NotebookPanel", timeout=90_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=90_000)  # fmt: skip
    kernel = page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
    assert kernel == "llama3-from-scratch"
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector(FIGURE, state="visible", timeout=120_000)
    page.wait_for_function(  # every cell has run: the kernel is idle and no cell waits
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'"
        " && !document.querySelector('.jp-InputPrompt')?.innerText.includes('*')"
        " && [...document.querySelectorAll('.jp-InputPrompt')].every(p => !p.innerText.includes('*'))",
        timeout=120_000,
    )
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").count() == 0
    figure = page.locator(FIGURE)
    figure.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    explorer = figure.locator("xpath=ancestor::div[contains(@class,'widget-hbox')][1]")
    explorer.screenshot(path=str(SHOTS / "1_default.png"))
    layer0, head0 = slider_value(page, "layer"), slider_value(page, "head")
    src0, png0 = figure.get_attribute("src"), figure_bytes(page)

    # The layer slider, by keyboard: its handle takes focus, an arrow key moves it one step.
    page.locator(".explorer-layer .noUi-handle").focus()
    page.keyboard.press("ArrowLeft")
    src1 = wait_for_new_figure(page, src0)
    png1 = figure_bytes(page)
    assert slider_value(page, "layer") != layer0
    assert png1 != png0, "moving the layer slider did not change the figure"
    explorer.screenshot(path=str(SHOTS / "2_layer_moved.png"))

    # The head slider, the same way.
    page.locator(".explorer-head .noUi-handle").focus()
    page.keyboard.press("ArrowLeft")
    src2 = wait_for_new_figure(page, src1)
    png2 = figure_bytes(page)
    assert slider_value(page, "head") != head0
    assert png2 != png1, "moving the head slider did not change the figure"
    explorer.screenshot(path=str(SHOTS / "3_head_moved.png"))

    # A click in the layers x heads grid opens that head: both sliders move, the figure changes.
    grid_button = explorer.locator(".widget-gridbox button").first
    grid_button.click()
    wait_for_new_figure(page, src2)
    assert (slider_value(page, "layer"), slider_value(page, "head")) == ("0", "0")
    assert figure_bytes(page) != png2
    explorer.screenshot(path=str(SHOTS / "4_grid_clicked.png"))
    page.screenshot(path=str(SHOTS / "5_page.png"))
