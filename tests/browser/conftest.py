"""Headless Chromium for the browser tests: Debian's build, driven by Playwright.

The browser is Debian's ``chromium`` (``scripts/dev`` installs it as root);
Playwright for Python drives it through ``executable_path``, so no
``playwright install`` download is ever needed. Screenshots go to
``artifacts/browser/`` at the top of the repository (gitignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM: Final = Path("/usr/bin/chromium")
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
#: Flags that make Debian's Chromium run headless in a container without
#: reaching out anywhere (Playwright adds --headless and a fresh profile).
LAUNCH_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Playwright's bound on every wait and action, in milliseconds.
TIMEOUT_MS: Final = 10_000


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless Chromium for these tests; skips (saying why) if it is not installed.

    Package-scoped: shared by every test here, and closed before the rest
    of the suite runs, so no browser process idles beside the Trio tests.
    """
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent: `bash scripts/dev system` installs Debian's chromium "
            "(it needs root and apt-get)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the test extra has it
        pytest.skip(f"playwright is not installed ({exc}); pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(LAUNCH_ARGS), timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


NewPage = Callable[..., "Page"]


@pytest.fixture
def new_page(browser: Browser) -> Iterator[NewPage]:
    """``new_page(clock=False)``: a page in a fresh context, closed after the test.

    With ``clock=True`` the context's timers and ``Date`` are Playwright's
    fake clock (``page.clock``), installed before any page script runs.
    """
    contexts: list[Any] = []

    def make(*, clock: bool = False) -> Page:
        context = browser.new_context(viewport={"width": 900, "height": 640})
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # type: ignore[attr-defined]
        if clock:
            page.clock.install()
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="package")
def artifacts() -> Path:
    """``artifacts/browser/``, emptied once per run."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS
