"""examples/chat.py's page in a real browser: headless Chromium driven by playwright.

Two pages join the chat served by ``python -m geo_ws run examples.chat:app``, talk,
see each other's joins and leaves, and reconnect by themselves after the server
restarts on the same port. A Leave is a clean close: the page sees 1000 (through
gevent-websocket it saw 1005, a Close without a status code).

The test saves a screenshot of a short conversation to its temporary directory; to
refresh the README's picture::

    GEO_WS_CHAT_SCREENSHOT=docs/chat.png python -m pytest tests/test_chat_browser.py

Needs Debian's ``chromium`` (``scripts/test.sh`` installs it) and the ``playwright``
package; ``playwright install`` is never used.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.live_apps.process import ROOT, TIMEOUT_FACTOR, ServerProcess

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
#: Where to copy the screenshot (relative to the repository), if anywhere.
SCREENSHOT_ENV = "GEO_WS_CHAT_SCREENSHOT"

#: How many lines of the page's log read exactly ``text``.
COUNT_LINES = """(text) =>
    [...document.querySelectorAll("#log div")].filter((d) => d.textContent === text).length"""


def free_port() -> int:
    """A port that was free a moment ago: the restarted server must come back on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChatServer:
    """``python -m geo_ws run examples.chat:app`` on a fixed port, restartable."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.process = ServerProcess(
            "-m", "geo_ws", "run", "examples.chat:app", "--port", str(self.port)
        )
        assert self.process.wait_serving() == ("127.0.0.1", self.port)

    def stop(self) -> None:
        """SIGTERM: Close 1001 to every page, then exit 0."""
        assert self.process is not None
        self.process.proc.terminate()
        assert self.process.wait(timeout=10) == 0, self.process.stderr.lines
        self.process.stop()
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def server() -> Iterator[ChatServer]:
    chat = ChatServer(free_port())
    chat.start()
    yield chat
    chat.kill()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


def open_chat(browser: Browser, url: str, name: str) -> Page:
    """A new page on the chat, not yet joined, with the name filled in."""
    page = browser.new_page(viewport={"width": 720, "height": 490})
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(url)
    page.fill("#name", name)
    return page


def count_lines(page: Page, text: str) -> int:
    """How many lines of the page's log read ``text``."""
    return int(page.evaluate(COUNT_LINES, text))


def wait_line(page: Page, text: str, count: int = 1) -> None:
    """Wait until ``count`` lines of the page's log read ``text``."""
    page.wait_for_function(f"([text, count]) => ({COUNT_LINES})(text) >= count", arg=[text, count])


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def test_two_pages_chat_leave_and_reconnect(
    server: ChatServer, browser: Browser, tmp_path: Path
) -> None:
    alice = open_chat(browser, server.url, "alice")
    bob = open_chat(browser, server.url, "bob")

    # Joining: a page is in the room once it sees its own join.
    alice.click("#join")
    expect(alice.locator("#status")).to_have_text("online")
    wait_line(alice, "alice joined")
    bob.click("#join")
    wait_line(bob, "bob joined")
    wait_line(alice, "bob joined")
    for page in (alice, bob):  # who is online: the chat's presence
        expect(page.locator("#online")).to_have_text("here: alice, bob")

    say(alice, "hi bob, this page talks to a gevent server")
    say(bob, "hello alice: sync handlers, Robyn's API")
    say(alice, "and it reconnects when the server restarts")
    for page in (alice, bob):
        wait_line(page, "alice: hi bob, this page talks to a gevent server")
        wait_line(page, "bob: hello alice: sync handlers, Robyn's API")
        wait_line(page, "alice: and it reconnects when the server restarts")
    screenshot = tmp_path / "chat.png"
    alice.screenshot(path=screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, ROOT / os.environ[SCREENSHOT_ENV])

    # A restart: SIGTERM closes both pages with 1001; they come back by themselves.
    # (Each page is back in the room once it sees its own join again.)
    server.stop()
    for page in (alice, bob):
        expect(page.locator("#status")).to_have_text("offline (1001)")
    server.start()
    wait_line(alice, "alice joined", 2)
    wait_line(bob, "bob joined", 2)
    for page in (alice, bob):
        expect(page.locator("#status")).to_have_text("online")
    say(bob, "back")
    wait_line(alice, "bob: back")

    # Leave is a clean close: 1000 on the page, a leave for the other one, no reconnect.
    # (The shutdown's close handlers may have sent leaves already: count them.)
    left, joined = count_lines(bob, "alice left"), count_lines(bob, "alice joined")
    alice.click("#leave")
    expect(alice.locator("#status")).to_have_text("offline (1000)")
    assert alice.evaluate("socket") is None  # what keeps the page from reconnecting
    wait_line(bob, "alice left", left + 1)
    # Join again: bob sees alice come back and talks to her.
    alice.click("#join")
    wait_line(alice, "alice joined", 3)
    wait_line(bob, "alice joined", joined + 1)
    say(bob, "welcome back")
    wait_line(alice, "bob: welcome back")

    # Closing bob's tab ends his connection: alice sees him leave.
    left = count_lines(alice, "bob left")
    bob.close()
    wait_line(alice, "bob left", left + 1)
    expect(alice.locator("#online")).to_have_text("here: alice")
