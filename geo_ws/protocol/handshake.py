"""The opening handshake of RFC 6455 section 4.2, sans-I/O.

Checks the headers of an upgrade request and builds the ``101 Switching Protocols``
response, or raises :class:`~geo_ws.exceptions.HandshakeError` with the HTTP status
to refuse it with. It reads a WSGI environ (a plain dict) and returns bytes: no
sockets, no gevent, no Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from ..exceptions import HandshakeError

__all__ = [
    "GUID",
    "accept_key",
    "check_origin",
    "check_request",
    "is_upgrade_request",
    "parse_request_head",
    "RequestHead",
    "response_101",
    "select_subprotocol",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""The magic string of RFC 6455 section 1.3, hashed with the client's key."""


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[^\x00-\x20\x7f]*")  # origin form, without controls or spaces


class RequestHead(NamedTuple):
    """The request line and headers of an HTTP/1.1 request, as sent."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    size: int
    """How many bytes the head took, the blank line included."""


def parse_request_head(data: bytes) -> RequestHead | None:
    """Parse a plain ``HTTP/1.1`` request head at the start of ``data``.

    This is the quick path for handshakes: it takes the common shape only (an
    origin-form target, ``name: value`` headers, no folded lines) and returns ``None``
    for anything else, including a head that has not fully arrived, so that a
    complete HTTP parser can deal with it (and answer 400 where it must). A bare CR
    or LF, or a NUL, anywhere in the head is such a case, as a control character in
    the target: it would otherwise end up inside a target or a header value (and in
    access logs).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    text = data[:end].decode("latin-1")
    lines = text.split("\r\n")
    # Every CR and LF belongs to a CRLF between two lines, and there is no NUL.
    breaks = len(lines) - 1
    if text.count("\r") != breaks or text.count("\n") != breaks or "\x00" in text:
        return None
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or request_line[2] != "HTTP/1.1":
        return None
    method, target, _ = request_line
    if not _TARGET.fullmatch(target) or not _TOKEN.fullmatch(method):
        return None
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        headers.append((name, value.strip(" \t")))
    return RequestHead(method, target, headers, end + 4)


def _tokens(value: str) -> set[str]:
    """Split a comma-separated header into lower-cased tokens."""
    return {token.strip().lower() for token in value.split(",")}


def is_upgrade_request(environ: Mapping[str, Any]) -> bool:
    """Tell whether a WSGI request asks to be upgraded to a WebSocket."""
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return False
    connection: str = environ.get("HTTP_CONNECTION", "")
    return connection.lower() == "upgrade" or "upgrade" in _tokens(connection)


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return _accept(key).decode("ascii")


def _accept(key: str) -> bytes:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest())


def check_request(environ: Mapping[str, Any]) -> str:
    """Validate a WebSocket upgrade request and return its ``Sec-WebSocket-Key``.

    Args:
        environ: the WSGI environ of the request.

    Raises:
        HandshakeError: 426 with ``Upgrade: websocket`` for a request that is no upgrade;
            400 for an upgrade that is not valid (not GET, not HTTP/1.1, missing or
            malformed key); 426 with a ``Sec-WebSocket-Version: 13`` header for a
            missing or unsupported version.
    """
    if not is_upgrade_request(environ):
        # No "Connection: Upgrade" to go with Upgrade: Connection is the server's (PEP
        # 3333), and servers that write their own would send two (see the Server's handler).
        raise HandshakeError(
            426, "this URL only serves WebSocket connections", [("Upgrade", "websocket")]
        )
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError(400, "a WebSocket handshake must use GET")
    if environ.get("SERVER_PROTOCOL", "HTTP/1.1") in ("HTTP/1.0", "HTTP/0.9"):
        # RFC 6455 section 4.1; an HTTP/1.0 server ignores Upgrade (RFC 9110 section 7.8).
        raise HandshakeError(400, "a WebSocket handshake needs HTTP/1.1")
    version = str(environ.get("HTTP_SEC_WEBSOCKET_VERSION", "")).strip()
    if version != "13":
        raise HandshakeError(
            426,
            f"unsupported Sec-WebSocket-Version {version!r}: only 13 is supported"
            if version
            else "missing Sec-WebSocket-Version header",
            [("Sec-WebSocket-Version", "13")],
        )
    key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")).strip()
    if not key:
        raise HandshakeError(400, "missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key header: not 16 bytes in base64")
    return key


def check_origin(environ: Mapping[str, Any], allowed: Collection[str | None]) -> None:
    """Refuse a handshake whose ``Origin`` is not one of ``allowed``.

    Browsers always send ``Origin``; other clients usually do not, so a request
    without one is accepted only when ``None`` is in ``allowed``.

    Raises:
        HandshakeError: 403 naming the refused origin.
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin not in allowed:
        raise HandshakeError(
            403, f"origin {origin!r} is not allowed" if origin else "missing Origin header"
        )


def select_subprotocol(environ: Mapping[str, Any], supported: Sequence[str]) -> str | None:
    """Pick the subprotocol to speak: the first of ``supported`` the client offers.

    Returns:
        The chosen subprotocol, or ``None`` when the client offers none of them (the
        handshake then goes on without one, as RFC 6455 section 4.2.2 allows).
    """
    if not supported:
        return None
    offered = {
        token.strip() for token in str(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")).split(",")
    }
    return next((name for name in supported if name in offered), None)


_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def response_101(key: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    """Build the ``101 Switching Protocols`` response that accepts a handshake.

    Args:
        key: the client's ``Sec-WebSocket-Key`` as returned by :func:`check_request`.
        headers: extra headers, e.g. ``Sec-WebSocket-Protocol``.
    """
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers) if headers else ""
    return b"".join((_101, _accept(key), b"\r\n", extra.encode("latin-1"), b"\r\n"))
