"""The opening handshake of RFC 6455 section 4, both sides, sans-I/O.

Server side (section 4.2): checks the headers of an upgrade request and builds the
``101 Switching Protocols`` response, or raises :class:`~geo_ws.exceptions.HandshakeError`
with the HTTP status to refuse it with. It reads a WSGI environ (a plain dict).

Client side (section 4.1): :class:`ClientHandshake` builds the request and checks the
response, or turns a refusal into a :class:`~geo_ws.exceptions.HandshakeError`.

Both take and return bytes: no sockets, no gevent, no Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ..exceptions import HandshakeError

__all__ = [
    "GUID",
    "MAX_REFUSAL_BODY",
    "MAX_RESPONSE_HEAD",
    "ClientHandshake",
    "ResponseHead",
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


# --- client side ----------------------------------------------------------------------------

#: Largest response head accepted during the opening handshake, in bytes.
MAX_RESPONSE_HEAD = 16384
#: Largest part of a refusal's body read to explain it in :class:`HandshakeError`.
MAX_REFUSAL_BODY = 4096


class ResponseHead(NamedTuple):
    """The status and headers of the server's answer to the opening handshake."""

    status: int
    headers: dict[str, str]
    """Names in lower case; repeated headers joined with ``", "``."""
    size: int
    """How many bytes the head took, the blank line included: frames may follow it."""

    @property
    def refusal_length(self) -> int:
        """How many bytes of a refusal's body to read to explain it (within a bound)."""
        try:
            length = int(self.headers.get("content-length", "0"))
        except ValueError:
            return 0
        return max(0, min(length, MAX_REFUSAL_BODY))


class ClientHandshake:
    """The client side of the opening handshake (RFC 6455 section 4.1), sans-I/O.

    The I/O layer connects to :attr:`host`:attr:`port` (with TLS if :attr:`secure`),
    sends :meth:`request`, feeds what it reads to :meth:`parse_response` until it returns
    the head, then calls :meth:`accept` (status 101) or raises :meth:`refusal` with the
    body it read (any other status)::

        handshake = ClientHandshake("ws://example.com/chat")
        sock.sendall(handshake.request())
        while (head := handshake.parse_response(buffer)) is None:
            buffer += sock.recv(4096)
        if head.status != 101:
            raise handshake.refusal(head, body)
        subprotocol = handshake.accept(head)

    Args:
        url: ``ws://host[:port]/path[?query]`` or ``wss://...``.
        headers: extra request headers (``Origin``, ``Authorization``, cookies...).
        subprotocols: subprotocols to offer in ``Sec-WebSocket-Protocol``, preferred first.

    Raises:
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        subprotocols: Sequence[str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.secure = parts.scheme == "wss"
        """Whether the connection uses TLS (``wss://``)."""
        self.host: str = parts.hostname
        """The host to connect to (without brackets for IPv6)."""
        default_port = 443 if self.secure else 80
        self.port: int = parts.port or default_port
        """The TCP port to connect to."""
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        """The ``Sec-WebSocket-Key`` of the request: 16 fresh random bytes in base64."""
        self.subprotocols: list[str] = list(subprotocols or ())
        """The subprotocols offered, preferred first."""
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None and parts.port != default_port:
            host_header += f":{parts.port}"
        self._host_header = host_header
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = headers.items() if isinstance(headers, Mapping) else headers or ()
        self._headers = list(extra)

    def request(self) -> bytes:
        """The upgrade request to send, head only (a GET has no body)."""
        lines = [
            f"GET {self._target} HTTP/1.1",
            f"Host: {self._host_header}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(self.subprotocols)}")
        lines.extend(f"{name}: {value}" for name, value in self._headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def parse_response(self, data: bytes) -> ResponseHead | None:
        """Parse the response head at the start of ``data``, everything received so far.

        Returns:
            The head, or None if it has not fully arrived yet (read more and call again).

        Raises:
            HandshakeError: the response is not HTTP, or its head is longer than
                :data:`MAX_RESPONSE_HEAD`.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_RESPONSE_HEAD:
                raise HandshakeError(0, "response head too long")
            return None
        status_line, *header_lines = data[:end].decode("latin-1").split("\r\n")
        version, _, status_text = status_line.partition(" ")
        code = status_text[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HandshakeError(0, f"not an HTTP response: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"
        return ResponseHead(int(code), headers, end + 4)

    def accept(self, head: ResponseHead) -> str | None:
        """Check that the response accepts the connection as RFC 6455 requires.

        Returns:
            The subprotocol the server chose, or None.

        Raises:
            HandshakeError: the server refused (any status but 101; prefer :meth:`refusal`
                with the body, which explains why), or its acceptance breaks RFC 6455: no
                ``Upgrade: websocket`` or ``Connection: Upgrade``, a wrong
                ``Sec-WebSocket-Accept``, an extension or a subprotocol not offered.
        """
        status, headers = head.status, head.headers
        if status != 101:
            raise self.refusal(head, b"")
        if headers.get("upgrade", "").lower() != "websocket":
            raise HandshakeError(status, "missing 'Upgrade: websocket' in the response")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            raise HandshakeError(status, "missing 'Connection: Upgrade' in the response")
        if headers.get("sec-websocket-accept") != accept_key(self.key):
            raise HandshakeError(status, "wrong Sec-WebSocket-Accept in the response")
        if headers.get("sec-websocket-extensions"):
            # None was offered, so none may be used (RFC 6455 section 4.1).
            raise HandshakeError(status, "the server chose an extension that was not offered")
        chosen = headers.get("sec-websocket-protocol")
        if chosen is not None and chosen not in self.subprotocols:
            raise HandshakeError(
                status, f"the server chose a subprotocol that was not offered: {chosen}"
            )
        return chosen

    def refusal(self, head: ResponseHead, body: bytes) -> HandshakeError:
        """The error that explains a refusal: its status, and the text of its body.

        Args:
            head: the response's head.
            body: the beginning of its body (up to :attr:`ResponseHead.refusal_length`
                bytes are used), possibly empty.
        """
        text = body[: head.refusal_length].decode("utf-8", "replace")
        return HandshakeError.refused(head.status, text, list(head.headers.items()))
