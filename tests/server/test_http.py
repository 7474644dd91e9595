"""RFC 9112 request-head rules and log escaping (geo_ws.server.http), without sockets.

The same rules over real sockets, with pipelined requests, are in test_builtin.py.
"""

from __future__ import annotations

import email.parser
import io

import pytest

from geo_ws.server.http import (
    MAX_HEADERS,
    REQUEST_LINE,
    BadHead,
    HeadReader,
    check_framing,
    log_safe,
)


def headers(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text.replace("\n", "\r\n") + "\r\n", headersonly=True)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("Content-Length: 5\nTransfer-Encoding: chunked", "400"),
        ("Content-Length: 5\nContent-Length: 6", "400"),
        ("Content-Length: -5", "400"),
        ("Content-Length: 5, 5", "400"),
        ("Transfer-Encoding: chunked, identity", "400"),
        ("Transfer-Encoding: chunked\nTransfer-Encoding: chunked", "400"),
        ("Transfer-Encoding: gzip, chunked", "501"),
    ],
)
def test_a_body_length_in_doubt_is_refused(head: str, status: str) -> None:
    with pytest.raises(BadHead) as refused:
        check_framing(headers(head), "HTTP/1.1")
    assert refused.value.status.startswith(status)
    assert b"Connection: close" in refused.value.response


@pytest.mark.parametrize(
    "head",
    ["Content-Length: 5", "Content-Length: 5\nContent-Length: 5", "Transfer-Encoding: chunked", ""],
)
def test_a_clear_body_length_passes(head: str) -> None:
    check_framing(headers(head), "HTTP/1.1")


def test_transfer_encoding_in_http_1_0_is_refused() -> None:
    with pytest.raises(BadHead):
        check_framing(headers("Transfer-Encoding: chunked"), "HTTP/1.0")


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        (b"GET /ws HTTP/1.1\r\n", True),
        (b"GET /ws\nFORGED HTTP/1.1\r\n", False),
        (b"GET /ws\r HTTP/1.1\r\n", False),
        (b"GET  /ws HTTP/1.1\r\n", False),
        (b"GET /ws HTTP/1.1\n", False),
    ],
)
def test_request_lines(line: bytes, ok: bool) -> None:
    assert bool(REQUEST_LINE.fullmatch(line.decode("latin-1"))) is ok


def test_the_head_reader_refuses_malformed_lines_and_too_many_fields() -> None:
    reader = HeadReader(io.BytesIO(b"Host: x\r\nUser-Agent: curl\nX: y\r\n\r\n"), 1024)
    assert reader.readline() == b"Host: x\r\n"
    with pytest.raises(BadHead, match="malformed"):
        reader.readline()
    many = b"".join(b"X-%d: y\r\n" % n for n in range(MAX_HEADERS + 1)) + b"\r\n"
    reader = HeadReader(io.BytesIO(many), 16 * 1024)
    with pytest.raises(BadHead) as refused:
        while reader.readline() not in (b"\r\n", b""):
            pass
    assert refused.value.status.startswith("431")


def test_the_head_reader_bounds_the_bytes() -> None:
    reader = HeadReader(io.BytesIO(b"X: " + b"y" * 100 + b"\r\n\r\n"), 50)
    with pytest.raises(BadHead) as refused:
        reader.readline()
    assert refused.value.status.startswith("431")


def test_log_safe_escapes_what_could_forge_a_line() -> None:
    assert log_safe("GET /ws HTTP/1.1") == "GET /ws HTTP/1.1"
    assert log_safe('a\nb\r"c\\') == "a\\x0ab\\x0d\\x22c\\x5c"
