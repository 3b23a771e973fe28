"""A real headless browser for the dashboard's tests: Debian's Chromium driven by Playwright
(never `playwright install`: the browser is the system's, installed by `make tools`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # everything it loads is on loopback
]


def require_chromium() -> None:
    """Fail with what to do when Chromium is missing; skip only where it cannot be had."""
    if Path(CHROMIUM).exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and apt-get is not available to install it")
    pytest.fail(f"{CHROMIUM} is missing: run `make tools` (apt-get install chromium)")


@contextmanager
def chromium(profile: Path) -> Iterator[object]:
    """A fresh browser profile in ``profile``; yields a Playwright page. The browser and
    Playwright's driver are stopped on the way out."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    profile.mkdir(parents=True, exist_ok=True)
    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1400, "height": 860},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
    finally:
        playwright.stop()
