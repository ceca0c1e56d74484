"""Real-browser tests: Playwright's sync API driving Debian's Chromium (/usr/bin/chromium,
installed by ``apt-get install chromium``, which scripts/test.sh does; no browser download).
Screenshots of every screen go to tests/artifacts/ (git-ignored).

A missing Chromium fails these tests with a message saying how to install it: a browser suite
that skips itself would let a broken page pass CI unnoticed.

Playwright runs one module at a time (``browser`` is module-scoped, not pytest-playwright's
session-wide one): its sync API keeps an asyncio loop marked as running in this thread while it
is started, which would break every later test that uses ``async_to_sync`` (the consumer tests)
or starts Playwright itself (the demo page tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM would refuse to run
# in it without this (the test code itself is synchronous).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
VIEWPORT = {"width": 1680, "height": 900}
# Django's navigation sidebar collapsed (as an operator with a wide list would have it; Django
# remembers the choice in localStorage).
COLLAPSED_SIDEBAR = "window.localStorage.setItem('django.admin.navSidebarIsOpen', 'false');"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real Chromium through Playwright")


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium"
            " (apt-get install -y chromium; scripts/test.sh installs it)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for the tests of one module (stopped, with Playwright, after the module)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.add_init_script(COLLAPSED_SIDEBAR)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    return context.new_page()


@pytest.fixture
def shot() -> Any:
    """``shot(page, "name")`` saves tests/artifacts/admin-<name>.png (the whole page)."""
    ARTIFACTS.mkdir(exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = ARTIFACTS / f"admin-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
