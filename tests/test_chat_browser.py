"""examples/chat.py's page in a real browser: headless Chromium driven by playwright.

Two pages join the chat served by ``python -m geo_ws run examples.chat:app``, talk,
see each other's joins and leaves, and come back by themselves (geo_ws.js resumes)
after the server restarts on the same port. Without Redis the restart loses the history
(the pages say so and join again); with a Redis the test starts, and under gunicorn with a
worker SIGKILLed, the pages resume and show every message once, including what they
typed while offline. A Leave is a clean close: the page sees 1000.

The test saves a screenshot of a short conversation to its temporary directory; to
refresh the README's picture::

    GEO_WS_CHAT_SCREENSHOT=docs/chat.png python -m pytest tests/test_chat_browser.py

Needs Chromium and playwright: see tests/live_apps/chromium.py.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.live_apps.chromium import TIMEOUT_MS, chromium
from tests.live_apps.process import ROOT, START_TIMEOUT, ServerProcess
from tests.live_apps.redis_server import RedisServer, free_port, redis_server
from tests.server.test_gunicorn import BOOTING, gunicorn

__all__ = ["redis_server"]  # the fixture, imported for pytest (the chat's namespace: geo_ws)

#: Where to copy the screenshot (relative to the repository), if anywhere.
SCREENSHOT_ENV = "GEO_WS_CHAT_SCREENSHOT"

#: What a page shows when its resume could not replay what it missed.
LOST = "(what was sent while this page was away is lost)"
#: The chat lines of the page's log ("NAME: TEXT"), in order; joins and leaves are not.
CHAT_LINES = """() => [...document.querySelectorAll("#log div")]
    .filter((d) => !d.className).map((d) => d.textContent)"""
#: Records the close codes of the page's socket in ``window.codes`` (the status shows
#: only the last: after a restart's 1001 come the 1006 of attempts while it is down).
RECORD_CLOSES = """() => {
    window.codes = [];
    socket.addEventListener("close", (e) => { window.codes.push(e.detail.code); });
}"""

#: How many lines of the page's log read exactly ``text``.
COUNT_LINES = """(text) =>
    [...document.querySelectorAll("#log div")].filter((d) => d.textContent === text).length"""


class ChatServer:
    """``python -m geo_ws run examples.chat:app`` on a fixed port, restartable."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start it (the environment's ``GEO_WS_BROKER_URL`` picks its broker)."""
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
    with chromium() as browser:
        yield browser


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


def join_both(browser: Browser, url: str) -> tuple[Page, Page]:
    """Alice and bob join, in that order; each has seen both joins.

    (A page is in the room once it sees its own join.)
    """
    alice, bob = open_chat(browser, url, "alice"), open_chat(browser, url, "bob")
    alice.click("#join")
    expect(alice.locator("#status")).to_have_text("online")
    wait_line(alice, "alice joined")
    bob.click("#join")
    wait_line(bob, "bob joined")
    wait_line(alice, "bob joined")
    for page in (alice, bob):  # who is online: the chat's presence
        expect(page.locator("#online")).to_have_text("here: alice, bob")
        page.evaluate(RECORD_CLOSES)
    return alice, bob


def assert_every_line_once(pages: tuple[Page, ...], said: list[str]) -> None:
    """Each page shows each of ``said`` exactly once, each sender's in order, no loss noted."""
    for page in pages:
        for line in said:
            wait_line(page, line)
        shown = page.evaluate(CHAT_LINES)
        assert sorted(shown) == sorted(said)  # once each, nothing else
        for sender in ("alice", "bob"):
            mine = [line for line in said if line.startswith(sender + ":")]
            assert [line for line in shown if line.startswith(sender + ":")] == mine
        assert count_lines(page, LOST) == 0


def test_two_pages_chat_leave_and_reconnect(
    server: ChatServer, browser: Browser, tmp_path: Path
) -> None:
    alice, bob = join_both(browser, server.url)

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

    # A restart: SIGTERM closes both pages with 1001; they come back by themselves
    # and try to resume: with the in-memory broker, the history went with the process,
    # so each page joins again as a new client (once it sees its own join again).
    server.stop()
    for page in (alice, bob):
        page.wait_for_function("() => window.codes[0] === 1001")
    server.start()
    wait_line(alice, "alice joined", 2)
    wait_line(bob, "bob joined", 2)
    # Without Redis the new process has no history: each page says so, once.
    for page in (alice, bob):
        assert count_lines(page, LOST) == 1
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


@pytest.fixture
def chat_redis(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat's broker: the session's redis-server, emptied (what an earlier test's
    killed server left there, presence entries still alive, must not show up here)."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    monkeypatch.setenv("GEO_WS_BROKER_URL", redis_server.url)


def test_restart_with_redis_resumes_every_message_once(chat_redis: None, browser: Browser) -> None:
    server = ChatServer(free_port())
    server.start()
    try:
        alice, bob = join_both(browser, server.url)
        said = ["alice: one", "bob: two"]
        say(alice, "one")
        say(bob, "two")
        for page in (alice, bob):
            wait_line(page, "bob: two")

        # SIGTERM: both pages offline; what they type meanwhile waits in their queues.
        server.stop()
        for page in (alice, bob):
            page.wait_for_function("() => window.codes[0] === 1001")
        for page, text in ((alice, "offline 1"), (bob, "offline 2"), (alice, "offline 3")):
            say(page, text)
        said += ["alice: offline 1", "bob: offline 2", "alice: offline 3"]

        # The same port again: the pages resume (same id: "is back"), the history in
        # Redis replays what each missed, the queues are flushed.
        server.start()
        for page in (alice, bob):
            expect(page.locator("#status")).to_have_text("online")
            assert page.evaluate("[socket.resumed, socket.recovered]") == [True, True]
        wait_line(alice, "bob is back")
        wait_line(bob, "alice is back")
        say(bob, "after")
        said.append("bob: after")
        assert_every_line_once((alice, bob), said)
    finally:
        server.kill()


def test_gunicorn_worker_killed_pages_resume_every_message_once(
    chat_redis: None, browser: Browser
) -> None:
    with gunicorn("examples.chat:app", workers=2) as (server, address):
        workers = [int(pid) for pid in BOOTING.findall("\n".join(server.stderr.lines))]
        assert len(workers) == 2
        alice, bob = join_both(browser, f"http://{address}/")
        said: list[str] = []
        # Each page is on one of the two workers: killing both, one after the other,
        # drops each page at least once. Each time both pages talk at once (a dropped
        # page queues), and each sees everything once before the next kill.
        for round_, pid in enumerate(workers):
            os.kill(pid, signal.SIGKILL)
            # Once gunicorn replaced the worker, its pages have seen their drop (they
            # queue what they are told to send); a send on a socket the page still
            # thinks open would be lost, as docs/browser.md says.
            booted = server.stderr.wait_for(BOOTING, START_TIMEOUT)
            assert int(booted.group(1)) not in workers
            for name, page in (("alice", alice), ("bob", bob)):
                say(page, f"round {round_}")
                said.append(f"{name}: round {round_}")
            assert_every_line_once((alice, bob), said)
        for page in (alice, bob):
            assert page.evaluate("window.codes.length") >= 1
            expect(page.locator("#status")).to_have_text("online")
