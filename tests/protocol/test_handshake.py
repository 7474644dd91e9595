"""The opening handshake, sans-I/O (RFC 6455 section 4.2)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from geo_ws.exceptions import HandshakeError
from geo_ws.protocol.handshake import (
    MAX_REFUSAL_BODY,
    MAX_RESPONSE_HEAD,
    ClientHandshake,
    RequestHead,
    accept_key,
    check_request,
    is_upgrade_request,
    parse_request_head,
    response_101,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()


def environ(**overrides: str) -> dict[str, str]:
    env = {
        "REQUEST_METHOD": "GET",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
        "HTTP_UPGRADE": "websocket",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def test_accept_key_matches_the_rfc_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_request_returns_its_key() -> None:
    assert check_request(environ()) == KEY
    assert is_upgrade_request(environ(HTTP_UPGRADE="WebSocket"))


@pytest.mark.parametrize(
    ("overrides", "status", "words"),
    [
        ({"HTTP_UPGRADE": ""}, 426, "only serves WebSocket"),
        ({"HTTP_CONNECTION": "keep-alive"}, 426, "only serves WebSocket"),
        ({"REQUEST_METHOD": "POST"}, 400, "GET"),
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, 400, "HTTP/1.1"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": ""}, 426, "missing Sec-WebSocket-Version"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, 426, "only 13"),
        ({"HTTP_SEC_WEBSOCKET_KEY": ""}, 400, "missing Sec-WebSocket-Key"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "not base64!"}, 400, "16 bytes"),
        ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"short").decode()}, 400, "16 bytes"),
    ],
)
def test_invalid_requests_are_refused(overrides: dict[str, str], status: int, words: str) -> None:
    with pytest.raises(HandshakeError) as error:
        check_request(environ(**overrides))
    assert error.value.status == status
    assert words in error.value.reason


def test_a_version_refusal_advertises_version_13() -> None:
    with pytest.raises(HandshakeError) as error:
        check_request(environ(HTTP_SEC_WEBSOCKET_VERSION="8"))
    assert ("Sec-WebSocket-Version", "13") in error.value.headers


def test_a_request_that_is_no_upgrade_is_told_to_upgrade_without_hop_by_hop_headers() -> None:
    with pytest.raises(HandshakeError) as error:
        check_request(environ(HTTP_UPGRADE=""))
    assert error.value.status == 426
    # Connection is the server's to write (PEP 3333): an app's would make two.
    assert error.value.headers == [("Upgrade", "websocket")]


def test_the_101_response() -> None:
    response = response_101(KEY, [("Sec-WebSocket-Protocol", "chat")])
    head, _, rest = response.partition(b"\r\n\r\n")
    assert rest == b""
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert "Upgrade: websocket" in lines and "Connection: Upgrade" in lines
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}" in lines
    assert "Sec-WebSocket-Protocol: chat" in lines


def test_check_origin() -> None:
    from geo_ws.protocol.handshake import check_origin

    check_origin(environ(HTTP_ORIGIN="https://a.example"), ["https://a.example"])
    check_origin(environ(), ["https://a.example", None])
    for env in (environ(HTTP_ORIGIN="https://b.example"), environ()):
        with pytest.raises(HandshakeError) as error:
            check_origin(env, ["https://a.example"])
        assert error.value.status == 403


def test_select_subprotocol_prefers_the_server_order() -> None:
    from geo_ws.protocol.handshake import select_subprotocol

    offered = environ(HTTP_SEC_WEBSOCKET_PROTOCOL="mqtt, v1.chat ,v2.chat")
    assert select_subprotocol(offered, ["v2.chat", "v1.chat"]) == "v2.chat"
    assert select_subprotocol(offered, ["graphql-ws"]) is None
    assert select_subprotocol(environ(), ["v2.chat"]) is None
    assert select_subprotocol(offered, []) is None


HEAD = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade:  websocket \r\n"
    b"Connection: Upgrade\r\n\r\n"
)


def test_parse_request_head_takes_a_whole_plain_head() -> None:
    head = parse_request_head(HEAD + b"\x81\x85frame")
    assert head == RequestHead(
        "GET",
        "/chat?room=1",
        [("Host", "example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade")],
        len(HEAD),
    )


@pytest.mark.parametrize(
    "data",
    [
        HEAD[:-2],  # not all there yet
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"/chat?room=1", b"http://example.com/chat"),  # absolute form
        HEAD.replace(b"GET /chat", b"GET  /chat"),
        HEAD.replace(b"Host: example.com\r\n", b"Host: example.com\r\n folded\r\n"),
        HEAD.replace(b"Host:", b"Host :"),
        HEAD.replace(b"Host:", b"Host"),
        HEAD.replace(b"GET", b"G(T"),
        HEAD.replace(b"/chat?", b"/chat\nFORGED-LINE?"),  # bare LF in the target
        HEAD.replace(b"example.com", b"example.com\nForged: 1"),  # ... in a header value
        HEAD.replace(b"example.com", b"example.com\rForged: 1"),  # bare CR
        HEAD.replace(b"example.com", b"example\x00.com"),  # NUL
        HEAD.replace(b"/chat", b"/ch\x1bat"),  # a control character in the target
    ],
)
def test_parse_request_head_leaves_anything_unusual_to_a_full_parser(data: bytes) -> None:
    assert parse_request_head(data) is None


FLASK_401 = """<!doctype html>
<html lang=en>
<title>401 Unauthorized</title>
<h1>Unauthorized</h1>
<p>The server could not verify that you are authorized to access the URL requested. You either
supplied the wrong credentials (e.g. a bad password), or your browser doesn&#x27;t understand
how to supply the credentials required.</p>
"""


def test_a_refusal_reads_as_its_status_line_and_the_text_of_its_body() -> None:
    error = HandshakeError.refused(401, FLASK_401)
    assert error.status == 401
    assert str(error).startswith(
        "HTTP 401 Unauthorized: 401 Unauthorized Unauthorized The server could not verify"
    )
    assert "<" not in str(error) and "&#x27;" not in error.reason and "\n" not in error.reason
    assert len(error.reason) == HandshakeError.EXCERPT_LENGTH and error.reason.endswith("...")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            HandshakeError.refused(403, "origin not allowed\n"),
            "HTTP 403 Forbidden: origin not allowed",
        ),
        (HandshakeError.refused(502, ""), "HTTP 502 Bad Gateway: the server refused the upgrade"),
        (HandshakeError.refused(599, "<p>odd</p>"), "HTTP 599: odd"),
        (HandshakeError(400, "missing Sec-WebSocket-Key header"), "HTTP 400 Bad Request: missing"),
        (HandshakeError(0, "not an HTTP response: 'SSH-2.0'"), "not an HTTP response: 'SSH-2.0'"),
    ],
)
def test_handshake_errors_name_their_status(error: HandshakeError, message: str) -> None:
    assert str(error).startswith(message)


# --- client side ----------------------------------------------------------------------------


def request_environ(request: bytes) -> dict[str, str]:
    """The WSGI environ a server would make of a client's request head."""
    head = parse_request_head(request)
    assert head is not None and head.size == len(request)
    env = {"REQUEST_METHOD": head.method, "PATH_INFO": head.target}
    for name, value in head.headers:
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def response(
    handshake: ClientHandshake, *extra: str, status: str = "101 Switching Protocols"
) -> bytes:
    """A server's answer: the 101 for the handshake's key unless told otherwise."""
    lines = [
        f"HTTP/1.1 {status}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(handshake.key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_the_client_request_passes_the_server_checks_and_its_101_is_accepted() -> None:
    handshake = ClientHandshake(
        "ws://example.com:8080/chat?room=1",
        headers={"Origin": "http://example.com"},
        subprotocols=["v2", "v1"],
    )
    env = request_environ(handshake.request())
    assert env["PATH_INFO"] == "/chat?room=1"
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["HTTP_ORIGIN"] == "http://example.com"
    assert env["HTTP_SEC_WEBSOCKET_PROTOCOL"] == "v2, v1"
    key = check_request(env)
    assert key == handshake.key and len(base64.b64decode(key)) == 16
    answer = response_101(key, [("Sec-WebSocket-Protocol", "v1")]) + b"\x81\x02hi"
    head = handshake.parse_response(answer)
    assert head is not None and answer[head.size :] == b"\x81\x02hi"
    assert handshake.accept(head) == "v1"


def test_every_handshake_has_a_fresh_key() -> None:
    assert ClientHandshake("ws://a/").key != ClientHandshake("ws://a/").key


@pytest.mark.parametrize(
    ("url", "host", "port", "secure", "host_header", "target"),
    [
        ("ws://example.com", "example.com", 80, False, "example.com", "/"),
        ("wss://example.com/x", "example.com", 443, True, "example.com", "/x"),
        ("wss://example.com:443/", "example.com", 443, True, "example.com", "/"),
        ("ws://[::1]:9000/p", "::1", 9000, False, "[::1]:9000", "/p"),
        ("ws://h:80/?a=b", "h", 80, False, "h", "/?a=b"),
    ],
)
def test_the_url_gives_where_to_connect_and_the_host_header(
    url: str, host: str, port: int, secure: bool, host_header: str, target: str
) -> None:
    handshake = ClientHandshake(url)
    assert (handshake.host, handshake.port, handshake.secure) == (host, port, secure)
    request = handshake.request().decode("latin-1")
    assert request.startswith(f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n")
    assert "Sec-WebSocket-Protocol" not in request


@pytest.mark.parametrize("url", ["http://example.com/", "ws:///path", "example.com"])
def test_only_websocket_urls_are_taken(url: str) -> None:
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        ClientHandshake(url)


def test_headers_may_repeat_as_pairs() -> None:
    request = ClientHandshake("ws://h/", headers=[("Cookie", "a=1"), ("Cookie", "b=2")]).request()
    assert b"\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n" in request


def test_a_response_head_is_parsed_once_it_has_fully_arrived() -> None:
    handshake = ClientHandshake("ws://h/")
    answer = response(handshake, "X-Multi: a", "x-multi: b")
    assert handshake.parse_response(answer[:-1]) is None
    head = handshake.parse_response(answer)
    assert head is not None
    assert head.status == 101 and head.size == len(answer)
    assert head.headers["x-multi"] == "a, b"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP response: 'SSH-2.0-OpenSSH_9.6'"),
        (b"HTTP/1.1 abc\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_RESPONSE_HEAD // 6), "too long"),
    ],
)
def test_a_response_that_is_not_a_proper_http_head_fails(data: bytes, message: str) -> None:
    with pytest.raises(HandshakeError, match=message) as info:
        ClientHandshake("ws://h/").parse_response(data)
    assert info.value.status == 0


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (
            lambda r: r.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
            "missing 'Upgrade: websocket'",
        ),
        (
            lambda r: r.replace(b"Connection: Upgrade", b"Connection: close"),
            "'Connection: Upgrade'",
        ),
        (lambda r: r.replace(b"Accept: ", b"Accept: x"), "wrong Sec-WebSocket-Accept"),
        (
            lambda r: r[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            "an extension that was not offered",
        ),
        (
            lambda r: r[:-2] + b"Sec-WebSocket-Protocol: v3\r\n\r\n",
            "a subprotocol that was not offered: v3",
        ),
    ],
)
def test_a_101_that_breaks_the_rfc_is_refused(
    mangle: Callable[[bytes], bytes], message: str
) -> None:
    handshake = ClientHandshake("ws://h/", subprotocols=["v1"])
    head = handshake.parse_response(mangle(response(handshake)))
    assert head is not None
    with pytest.raises(HandshakeError, match=message) as info:
        handshake.accept(head)
    assert info.value.status == 101


def test_connection_upgrade_may_come_with_other_tokens() -> None:
    handshake = ClientHandshake("ws://h/")
    answer = response(handshake).replace(b"Connection: Upgrade", b"Connection: keep-alive, upgrade")
    head = handshake.parse_response(answer)
    assert head is not None and handshake.accept(head) is None


def test_a_refusal_explains_itself_with_its_body_within_its_length() -> None:
    handshake = ClientHandshake("ws://h/")
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 20\r\n\r\n<p>origin denied</p>"
    head = handshake.parse_response(answer)
    assert head is not None and head.refusal_length == 20
    error = handshake.refusal(head, answer[head.size :] + b"trailing junk")
    assert (error.status, error.reason) == (403, "origin denied")
    assert ("content-length", "20") in error.headers
    with pytest.raises(HandshakeError, match="HTTP 403 Forbidden: the server refused"):
        handshake.accept(head)  # without the body, the status alone


@pytest.mark.parametrize(
    ("content_length", "expected"),
    [("", 0), ("12", 12), ("nope", 0), ("-5", 0), (str(10**9), MAX_REFUSAL_BODY)],
)
def test_the_refusal_length_is_bounded(content_length: str, expected: int) -> None:
    handshake = ClientHandshake("ws://h/")
    extra = f"Content-Length: {content_length}\r\n" if content_length else ""
    head = handshake.parse_response(f"HTTP/1.1 500 Oops\r\n{extra}\r\n".encode())
    assert head is not None and head.refusal_length == expected
