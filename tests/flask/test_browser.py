"""The browser client: geo_ws.js served by the app, and its codec run in headless Chromium.

(geo_ws.flask.browser, geo_ws/flask/static/geo_ws.js)
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, url_for
from playwright.sync_api import Browser, Page

from geo_ws import GeoWS, browser_client
from geo_ws.flask.browser import CACHE_SECONDS, script_source

from ..helpers import WAIT
from ..live_apps.chromium import TIMEOUT_MS, chromium
from ..live_apps.process import ServerProcess

SCRIPT = "/geo_ws/geo_ws.js"
#: Imports geo_ws.js as ``window.geo``.
IMPORT = f"async () => {{ window.geo = await import('{SCRIPT}'); window.sockets = []; }}"
#: Opens ``window.sock`` on ``path`` and records what it sees in ``window.seen``.
OPEN_SOCKET = """([path, options]) => {
    window.seen = {open: 0, close: [], message: [], offsets: [], resumed: 0, failed: []};
    options = {initialDelay: 20, maxDelay: 100, ...options};
    if (options.storage) options.storage = window[options.storage];  // named by the test
    window.sock = new geo.GeoSocket(path, options);
    sockets.push(sock);
    sock.addEventListener("open", () => { seen.open += 1; });
    sock.addEventListener("close", ({detail: d}) => seen.close.push([d.code, d.reconnecting]));
    sock.addEventListener("message", (e) => {
        seen.message.push(e.data);
        seen.offsets.push(Number(e.lastEventId));
    });
    sock.addEventListener("resumed", () => { seen.resumed += 1; });
    sock.addEventListener("recovery-failed", ({detail: d}) => seen.failed.push(d));
}"""
#: Closes every socket the page opened.
CLOSE_ALL = "() => { for (const socket of sockets.splice(0)) socket.close(); }"


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """GET ``url``: status, headers, body (a 304 is an answer, not an error)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_geows_serves_the_module_cacheable(serve) -> None:
    app = Flask(__name__)
    GeoWS(app)
    address = serve(app)
    status, headers, body = fetch(f"http://{address}{SCRIPT}")
    assert status == 200
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert body == script_source()
    assert body.startswith(b"/**\n * geo_ws.js")
    assert headers["Cache-Control"] in (
        f"public, max-age={CACHE_SECONDS}",
        f"max-age={CACHE_SECONDS}, public",
    )
    # Revalidation after the hour: unchanged, so 304 without a body.
    status, _, body = fetch(f"http://{address}{SCRIPT}", {"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")


def test_blueprint_registered_by_hand_under_a_prefix() -> None:
    app = Flask(__name__)
    app.register_blueprint(browser_client, url_prefix="/static/ws")
    GeoWS(app)  # sees the blueprint there already: no second registration
    with app.test_request_context():
        assert url_for("geo_ws_client.script") == "/static/ws/geo_ws.js"
    assert app.test_client().get("/geo_ws/geo_ws.js").status_code == 404


# -- the codec, in Chromium --------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Browser, str]]:
    """Chromium, and the URL of tests/live_apps/browser_client.py served in a subprocess."""
    with ServerProcess(
        "-m", "geo_ws", "run", "tests.live_apps.browser_client:app", "--port", "0"
    ) as server:
        host, port = server.wait_serving()
        with chromium() as browser:
            yield browser, f"http://{host}:{port}/"


def open_page(site: tuple[Browser, str]) -> Page:
    """A new page of the site with geo_ws.js imported as ``window.geo``."""
    browser, url = site
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.evaluate(IMPORT)
    return page


@pytest.fixture(scope="module")
def page(site: tuple[Browser, str]) -> Page:
    """One page for the tests of this module that need no page of their own."""
    return open_page(site)


@pytest.fixture(autouse=True)
def close_sockets(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close the test's sockets, so that none reconnects during the next test."""
    yield
    if "page" in request.fixturenames:
        request.getfixturevalue("page").evaluate(CLOSE_ALL)


def test_parse_text_frames(page: Page) -> None:
    parsed = page.evaluate(
        """() => ["12:hello", "3:a:b", "7:", '{"type": "later"}'].map(geo.parseFrame)"""
    )
    assert parsed == [
        {"offset": 12, "data": "hello"},
        {"offset": 3, "data": "a:b"},  # only the first colon separates
        {"offset": 7, "data": ""},
        {"control": {"type": "later"}},
    ]


@pytest.mark.parametrize("frame", ["hello", ":x", "-1:x", "1e3:x", " 1:x", "99999999999999999:x"])
def test_parse_rejects_text_off_the_wire(page: Page, frame: str) -> None:
    error = page.evaluate(
        "(f) => { try { geo.parseFrame(f); return null; } catch (e) { return e.message; } }",
        frame,
    )
    assert error is not None and error.startswith("geo_ws: not a positioned text frame")


def test_parse_binary_frames(page: Page) -> None:
    offset = 2**40 + 5
    parsed = page.evaluate(
        """(frame) => {
            const { offset, data } = geo.parseFrame(new Uint8Array(frame).buffer);
            return [offset, [...new Uint8Array(data)]];
        }""",
        list(offset.to_bytes(8, "big") + b"\x00\x01\xff"),
    )
    assert parsed == [offset, [0, 1, 255]]
    error = page.evaluate(
        "() => { try { geo.parseFrame(new ArrayBuffer(7)); } catch (e) { return e.message; } }"
    )
    assert error == "geo_ws: binary frame shorter than its offset"


def test_first_message(page: Page) -> None:
    start, resume = page.evaluate(
        """() => [geo.firstMessage(null),
                  geo.firstMessage({session: "s3cr3t", epoch: "e1", offset: 41})]"""
    )
    assert start == '{"type":"start"}'
    assert resume == '{"type":"resume","session":"s3cr3t","epoch":"e1","offset":41}'


def test_final_close_codes(page: Page) -> None:
    codes = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 2999]
    codes += [3000, 4999]
    final = page.evaluate("(codes) => codes.filter(geo.isFinal)", codes)
    assert final == [1000, 1002, 1003, 1007, 1008, 1009, 1010, 3000, 4999]


def test_backoff_is_exponential_capped_and_jittered(page: Page) -> None:
    low, high, capped = page.evaluate(
        """() => {
            const at = (random) => [0, 1, 2, 3].map(
                (n) => geo.backoffDelay(n, {initial: 100, max: 1000, random}));
            return [at(() => 0), at(() => 1), geo.backoffDelay(20, {initial: 100, max: 1000})];
        }"""
    )
    assert low == [50, 100, 200, 400]  # half of each ceiling is fixed
    assert high == [100, 200, 400, 800]
    assert 500 <= capped <= 1000
    spread = page.evaluate(
        "() => new Set(Array.from({length: 20}, () => geo.backoffDelay(3))).size"
    )
    assert spread > 1  # Math.random by default: clients dropped together spread out


# -- GeoSocket on an endpoint without recovery -----------------------------------------


def test_resume_offered_to_an_endpoint_without_recovery_never_opens(page: Page) -> None:
    """Chromium fails a handshake that answers none of the subprotocols it offered."""
    page.evaluate(OPEN_SOCKET, ["/echo", {}])
    page.wait_for_function("() => seen.close.length >= 2")
    page.evaluate("() => sock.close()")
    assert page.evaluate("() => [seen.open, seen.close[0]]") == [0, [1006, True]]


def test_plain_endpoint_reconnects_and_flushes_the_offline_queue(page: Page) -> None:
    # The first reconnect waits 0.5 s at least: time to queue while offline.
    options = {"resume": False, "maxQueue": 3, "initialDelay": 1000, "maxDelay": 1000}
    page.evaluate(OPEN_SOCKET, ["/echo", options])
    page.wait_for_function("() => seen.open === 1")
    assert page.evaluate("() => [sock.plain, sock.id, sock.resumed, sock.recovered]") == [
        True,
        None,
        False,
        False,
    ]
    page.evaluate("() => sock.send('one')")
    page.wait_for_function("() => seen.message.length === 1")

    # The server closes with 1012: sends made while offline wait in order, up to maxQueue.
    page.evaluate("() => sock.send('restart')")
    page.wait_for_function("() => seen.close.length === 1")
    queued = page.evaluate("() => ['a', 'b', 'c', 'd'].map((m) => sock.send(m))")
    assert queued == [True, True, True, False]  # the queue holds 3: 'd' is refused
    page.wait_for_function("() => seen.open === 2 && seen.message.length === 4")
    page.evaluate("() => sock.send('two')")
    page.wait_for_function("() => seen.message.length === 5")
    assert page.evaluate("() => [seen.open, seen.close, seen.message]") == [
        2,
        [[1012, True]],
        ["one", "a", "b", "c", "two"],
    ]

    # close(): a clean close, no reconnect, sends refused.
    page.evaluate("() => sock.close()")
    page.wait_for_function("() => seen.close.length === 2")
    assert page.evaluate("() => [seen.close[1], sock.send('late'), sock.connected]") == [
        [1000, False],
        False,
        False,
    ]


# -- GeoSocket on an endpoint with recovery ---------------------------------------------


def test_resume_keeps_the_id_and_delivers_every_message_once(page: Page) -> None:
    page.evaluate(OPEN_SOCKET, ["/feed", {}])
    page.wait_for_function("() => seen.open === 1")
    first_id = page.evaluate("() => sock.id")
    # The server closes sock (1012) while a second client sends 30 messages: those sent
    # while sock is away come in the replay, the others live; none twice, none lost.
    page.evaluate(
        """() => {
            window.writer = new geo.GeoSocket("/feed");
            sockets.push(writer);
            writer.addEventListener("open", () => {
                sock.send("restart");
                for (let n = 0; n < 30; n++) writer.send(`m${n}`);
            }, {once: true});
        }"""
    )
    page.wait_for_function("() => seen.message.length >= 30")
    seen = page.evaluate("() => seen")
    assert seen["message"] == [f"m{n}" for n in range(30)]
    offsets = seen["offsets"]
    assert offsets == sorted(set(offsets))  # offsets only grow
    assert (seen["open"], seen["close"], seen["resumed"], seen["failed"]) == (
        2,
        [[1012, True]],
        1,
        [],
    )
    assert page.evaluate("() => [sock.id, sock.resumed, sock.recovered, sock.offset]") == [
        first_id,
        True,
        True,
        offsets[-1],
    ]


def test_back_after_the_window_is_told_recovery_failed(page: Page) -> None:
    # /short keeps a session half a second: the first attempt waits 0.75 s at least.
    page.evaluate(OPEN_SOCKET, ["/short", {"initialDelay": 1500, "maxDelay": 1500}])
    page.wait_for_function("() => seen.open === 1")
    first_id = page.evaluate("() => sock.id")
    page.evaluate("() => sock.send('restart')")
    page.wait_for_function("() => seen.open === 2", timeout=TIMEOUT_MS + 1500)
    failed = page.evaluate("() => seen.failed")
    assert len(failed) == 1 and failed[0]["resumed"] is False and failed[0]["recovered"] is False
    assert page.evaluate("() => [seen.resumed, sock.resumed, sock.id === null]") == [
        0,
        False,
        False,
    ]
    assert page.evaluate("() => sock.id") != first_id  # a new client
    page.evaluate("() => sock.send('after')")
    page.wait_for_function("() => seen.message.length === 1")
    assert page.evaluate("() => seen.message") == ["after"]


def test_session_storage_resumes_across_a_reload(site: tuple[Browser, str]) -> None:
    page = open_page(site)
    try:
        page.evaluate(OPEN_SOCKET, ["/feed", {"storage": "sessionStorage"}])
        page.wait_for_function("() => seen.open === 1")
        page.evaluate("() => sock.send('before')")
        page.wait_for_function("() => seen.message.length === 1")
        first_id, offset = page.evaluate("() => [sock.id, sock.offset]")
        page.reload()  # the socket goes away with the page; its session stays in the tab
        page.evaluate(IMPORT)
        page.evaluate(OPEN_SOCKET, ["/feed", {"storage": "sessionStorage"}])
        page.wait_for_function("() => seen.open === 1")
        assert page.evaluate("() => [sock.id, sock.resumed, sock.recovered]") == [
            first_id,
            True,
            True,
        ]
        assert page.evaluate("() => sock.offset") >= offset
        page.evaluate("() => sock.send('after')")
        page.wait_for_function("() => seen.message.length === 1")
        assert page.evaluate("() => seen.message") == ["after"]  # 'before' not again
        page.evaluate(CLOSE_ALL)
        # close() forgets the session: the tab's storage holds nothing any more.
        assert page.evaluate("() => sessionStorage.length") == 0
    finally:
        page.close()
