"""Exceptions raised by geo_ws.

The tree::

    WebSocketError
    ├── ProtocolError              the peer broke RFC 6455; carries the close code to fail with
    │   ├── InvalidUTF8            1007: a text message or close reason is not UTF-8
    │   └── PayloadTooBig          1009: a message exceeds ``max_message_size``
    ├── HandshakeError             the opening handshake is refused; carries the HTTP status
    ├── ConnectionClosed           the connection is closed; carries the close code and reason
    │   ├── ConnectionClosedOK     ... with 1000 or 1001
    │   └── ConnectionClosedError  ... with any other code
    └── InvalidState               geo_ws was used wrongly (also an ``AssertionError``)

Protocol errors carry their close code so that the code is chosen once, where the
error is detected, and the connection layer only has to put it on the wire.
"""

from __future__ import annotations

import html
import http
import re

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeError",
    "InvalidState",
    "InvalidUTF8",
    "PayloadTooBig",
    "ProtocolError",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Base class of every exception geo_ws raises."""


class ProtocolError(WebSocketError):
    """The peer violated the protocol; the connection must be failed with :attr:`code`.

    Args:
        reason: what was wrong, sent to the peer as the close reason.
        code: the close code to fail the connection with (1002 by default).
    """

    default_code = 1002

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        """What was wrong, in a few words (fits a close frame)."""
        self.code = self.default_code if code is None else code
        """The close code the connection is failed with."""


class InvalidUTF8(ProtocolError):
    """A text message or close reason is not valid UTF-8 (close code 1007)."""

    default_code = 1007


class PayloadTooBig(ProtocolError):
    """A message is larger than the endpoint accepts (close code 1009)."""

    default_code = 1009


_MARKUP = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>|<[^>]*>", re.DOTALL | re.IGNORECASE)
_SPACE = re.compile(r"\s+")


class HandshakeError(WebSocketError):
    """The opening handshake is refused with an HTTP error.

    Its message is the status line and the reason: ``HTTP 403 Forbidden: origin
    'http://evil' is not allowed``.

    Args:
        status: the HTTP status to answer with (400, 403, 426, ...); 0 when the
            response was not HTTP at all (client side).
        reason: a one-line explanation, sent as the response body.
        headers: extra response headers, e.g. ``Sec-WebSocket-Version`` for 426.
    """

    #: How many characters of a refusal's body :meth:`refused` keeps.
    EXCERPT_LENGTH = 200

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        if status:
            try:
                line = f"HTTP {status} {http.HTTPStatus(status).phrase}"
            except ValueError:  # a status Python does not name
                line = f"HTTP {status}"
            super().__init__(f"{line}: {reason}")
        else:
            super().__init__(reason)
        self.status = status
        """The HTTP status code of the refusal."""
        self.reason = reason
        """A one-line explanation of the refusal."""
        self.headers = headers or []
        """Extra headers for the refusal."""

    @classmethod
    def refused(
        cls, status: int, body: str, headers: list[tuple[str, str]] | None = None
    ) -> HandshakeError:
        """The error for a server's refusal: its status, and its body as readable text.

        Markup (an HTML error page) is dropped, entities decoded, whitespace collapsed,
        and the text cut to :attr:`EXCERPT_LENGTH` characters.

        Args:
            status: the response's status.
            body: the response's body (or its beginning), decoded.
            headers: the response's headers.
        """
        text = _SPACE.sub(" ", html.unescape(_MARKUP.sub(" ", body))).strip()
        if len(text) > cls.EXCERPT_LENGTH:
            text = text[: cls.EXCERPT_LENGTH - 3].rstrip() + "..."
        return cls(status, text or "the server refused the upgrade", headers)


class ConnectionClosed(WebSocketError):
    """The connection is closed; raised by operations that need it open.

    Args:
        code: the close code (1006 when the TCP connection was lost without a Close frame).
        reason: the close reason, possibly empty.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        """The close code."""
        self.reason = reason
        """The close reason."""

    @staticmethod
    def for_code(code: int, reason: str = "") -> ConnectionClosed:
        """Return a :class:`ConnectionClosedOK` or :class:`ConnectionClosedError` for ``code``."""
        cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
        return cls(code, reason)


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally (1000) or because an endpoint went away (1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed with an error code, or lost."""


class InvalidState(WebSocketError, AssertionError):
    """An operation is not allowed in the current state; a bug in the calling code."""
