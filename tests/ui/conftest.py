"""The browser tests run only from `make test-ui` (it sets LLAMA3_TEST_UI=1), never in `make test`.

They drive Debian's Chromium (`make test-ui` installs the package if missing; Playwright cannot
download browsers on these machines) through Playwright, headless, at 1600x1000.
"""

import os
from pathlib import Path

import pytest

collect_ignore_glob = [] if os.environ.get("LLAMA3_TEST_UI") == "1" else ["test_*.py"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A Chromium browser context with a fresh profile; closed after the module's tests."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test-ui` installs Debian's chromium package")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000},
        )  # fmt: skip
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()
