"""Headless Chromium driven by playwright, for the tests of geo_ws.js and the chat page.

Needs Debian's ``chromium`` (``scripts/test.sh`` installs it) and the ``playwright``
package; ``playwright install`` is never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

from .process import TIMEOUT_FACTOR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The longest any single browser wait may take, in milliseconds.
TIMEOUT_MS = 10_000 * TIMEOUT_FACTOR


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed at the end."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()
