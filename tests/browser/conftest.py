"""Real-browser tests: Playwright's sync API driving Debian's Chromium (/usr/bin/chromium,
installed by ``apt-get install chromium``; no browser download) against pytest-django's live
server and a real pool. Screenshots of every screen go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM would refuse to run
# in it without this (the test code itself is synchronous).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real Chromium through Playwright")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not Path(CHROMIUM).exists():
        skip = pytest.mark.skip(reason=f"{CHROMIUM} missing: apt-get install -y chromium")
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1680, "height": 900}}


@pytest.fixture
def page(context: Any) -> Any:
    """A page with Django's navigation sidebar collapsed (as an operator with a wide list would
    have it; Django remembers the choice in localStorage)."""
    context.add_init_script(
        "window.localStorage.setItem('django.admin.navSidebarIsOpen', 'false');"
    )
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
