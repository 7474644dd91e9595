"""HTTP/1.1 request heads as RFC 9112 asks, and access-log lines that cannot be forged.

pywsgi parses requests leniently; geo_ws's handler checks each head against these
rules first (every Flask route is behind it).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import gevent

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "REQUEST_LINE",
    "AccessLog",
    "BadHead",
    "HeadReader",
    "access_line",
    "bad_request",
    "check_framing",
    "log_safe",
]

#: The request line and headers of a request may take at most this many bytes (431 beyond).
MAX_HEAD_SIZE = 16 * 1024
#: A request may have at most this many header fields (431 beyond), however they
#: arrive: the header parser pywsgi uses (``http.client``) takes no more, as it counts
#: the blank line that ends them among its 100 lines.
MAX_HEADERS = 99

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 sections 3 and 5: what a request line and a header field line may be. No
# bare CR or LF (they would end a line early for some parsers, and show up in access
# logs), no NUL, no whitespace around the method or before the colon, no folding.
REQUEST_LINE = re.compile(_TOKEN.decode() + r" [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r\n")
_FIELD_LINE = re.compile(_TOKEN + rb":[^\r\n\x00]*\r\n")


class BadHead(Exception):
    """The request's head is refused: answer ``status`` and close the connection.

    Args:
        status: the status line's code and phrase, e.g. ``"400 Bad Request"``.
        reason: what was wrong, the response's body.
    """

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        body = reason.encode("ascii") + b"\n"
        self.response = (
            f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii") + body
        """The whole response."""


def bad_request(reason: str) -> BadHead:
    """A 400 refusal saying ``reason``."""
    return BadHead("400 Bad Request", reason)


_DIGITS = re.compile(r"[0-9]+")


def check_framing(headers: Any, version: str) -> None:
    """Refuse a request whose body's length is in doubt (RFC 9112 section 6).

    Two parsers on the way (a proxy and this server) could each see a different end of
    the body, and take the rest for another request: request smuggling.

    Args:
        headers: the request's parsed headers (an ``email.message.Message``).
        version: the request's HTTP version, e.g. ``"HTTP/1.1"``.

    Raises:
        BadHead: 400, or 501 for a transfer coding other than chunked.
    """
    codings = headers.get_all("Transfer-Encoding")
    lengths = headers.get_all("Content-Length")
    if codings:
        if lengths:
            raise bad_request("both Transfer-Encoding and Content-Length")
        if version == "HTTP/1.0":
            raise bad_request("Transfer-Encoding in an HTTP/1.0 request")
        names = [name.strip().lower() for value in codings for name in value.split(",")]
        if names[-1] != "chunked" or "chunked" in names[:-1]:
            raise bad_request("chunked must be the final transfer coding, once")
        if len(names) > 1:
            raise BadHead("501 Not Implemented", "only the chunked transfer coding is supported")
    elif lengths:
        values = {value.strip() for value in lengths}
        if len(values) > 1 or not _DIGITS.fullmatch(values.pop()):
            raise bad_request("invalid Content-Length")


class HeadReader:
    """What the header parser reads through: at most ``limit`` bytes of the buffered
    reader, in at most :data:`MAX_HEADERS` well-formed header field lines.

    Raises:
        BadHead: 431 past ``limit`` or :data:`MAX_HEADERS`, 400 for a malformed line.
    """

    def __init__(self, rfile: Any, limit: int) -> None:
        self._rfile = rfile
        self._left = limit
        self._fields = 0

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._rfile.readline(
            self._left + 1 if size < 0 else min(size, self._left + 1)
        )
        self._left -= len(line)
        if self._left < 0:
            raise BadHead(
                "431 Request Header Fields Too Large", "request headers are larger than 16 KiB"
            )
        if line in (b"\r\n", b""):
            return line
        if not _FIELD_LINE.fullmatch(line):
            raise bad_request("malformed header line")
        self._fields += 1
        if self._fields > MAX_HEADERS:
            raise BadHead(
                "431 Request Header Fields Too Large", f"more than {MAX_HEADERS} header fields"
            )
        return line


# What the client sent is logged with control characters, quotes and backslashes as
# \xNN, as nginx does: a CR or LF must not start a forged line of the log.
_UNSAFE = re.compile(r'[\x00-\x1f"\\\x7f-\x9f]')


def log_safe(text: str) -> str:
    """``text`` (sent by a client) as it may be written to a log."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


_stamp: tuple[int, str] = (-1, "")


def access_line(client: Any, requestline: str, status: str, length: Any, started: float) -> str:
    """A line of the access log, in gevent's format."""
    global _stamp
    second = int(started)
    if second != _stamp[0]:  # the time stamp, formatted once a second
        _stamp = (second, str(datetime.fromtimestamp(second)))
    return (
        f'{client or "-"} - - [{_stamp[1]}] "{log_safe(requestline)}" {status.split()[0]} '
        f"{length or '-'} {time.time() - started:.6f}\n"
    )


class AccessLog:
    """An access log written once per turn of the event loop.

    A burst of handshakes then costs one write, not a system call each (stderr is
    line-buffered).
    """

    def __init__(self, out: Any) -> None:
        self.out = out
        """Where the lines go: a file-like object."""
        self._lines: list[str] = []

    def write(self, line: str) -> None:
        """Log ``line`` (with its newline) at the end of this turn of the event loop."""
        if not self._lines:
            gevent.get_hub().loop.run_callback(self._flush)
        self._lines.append(line)

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        try:
            self.out.write("".join(lines))
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not stop the server
