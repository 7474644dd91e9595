"""The resume wire: how a client that drops comes back and gets what it missed.

No I/O: the server (:mod:`geo_ws.flask.connector`) and the Python client
(:mod:`geo_ws.io.resuming`) speak it through these functions; docs/recovery.md describes
it for other clients.

A client asks for it by offering the subprotocol :data:`SUBPROTOCOL`; a server picks it
only on an endpoint with ``recovery=``. Then:

1. The client's first message is a :class:`Start` or a :class:`Resume` (JSON text).
2. The server's first message is a :class:`Hello` (JSON text).
3. Every data message from the server carries its offset in the endpoint's log: a text
   message as ``"<offset>:<text>"``, a binary one as an 8-byte big-endian offset and
   the payload (:func:`positioned`, read back by :func:`parse_positioned`). Later
   control messages from the server are text starting with ``{``.
4. The client's other messages go unchanged.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

from ..exceptions import ProtocolError
from .frames import Opcode
from .outgoing import Outgoing

__all__ = [
    "MAX_SESSION_LENGTH",
    "SUBPROTOCOL",
    "Hello",
    "Resume",
    "ResumeError",
    "Start",
    "parse_first",
    "parse_hello",
    "parse_positioned",
    "positioned",
]

SUBPROTOCOL = "geo_ws.resume.1"
"""The subprotocol a client offers to resume; its version is in the name."""

MAX_SESSION_LENGTH = 128
"""The longest session a client may present (the server makes 43 characters)."""

MAX_OFFSET = 2**63 - 1
"""The largest offset: one that fits in a signed 64-bit integer (Redis' counters)."""

_OFFSET = struct.Struct("!Q")


class ResumeError(ProtocolError):
    """A peer broke the resume wire; :attr:`code` is the close code to fail with.

    1003 for a first message that is not text, 1002 for one that is not the JSON
    expected, 1008 for well-formed JSON with values out of bounds.
    """


@dataclass(frozen=True)
class Start:
    """A client's first message for a new session: ``{"type": "start"}``."""

    def encode(self) -> str:
        """The JSON text to send."""
        return '{"type":"start"}'


@dataclass(frozen=True)
class Resume:
    """A client's first message to come back to ``session``, having handed its app
    every message up to ``offset`` of the log ``epoch``."""

    session: str
    epoch: str
    offset: int

    def encode(self) -> str:
        """The JSON text to send."""
        return json.dumps({"type": "resume", **asdict(self)}, separators=(",", ":"))


@dataclass(frozen=True)
class Hello:
    """The server's first message.

    ``resumed``: the session was found, the client has its id and rooms back.
    ``recovered``: and every message it missed follows. ``missed``: how many messages it
    missed when that is known (``None`` otherwise, e.g. the log was lost).
    """

    id: str
    """The connection's public id (``ws.id``)."""
    session: str
    """The private session to present when coming back: a bearer secret."""
    epoch: str
    offset: int
    """The log's last offset when the client was registered."""
    resumed: bool
    recovered: bool
    missed: int | None

    def encode(self) -> str:
        """The JSON text to send."""
        return json.dumps({"type": "hello", **asdict(self)}, separators=(",", ":"))


def positioned(message: Outgoing, offset: int) -> Outgoing:
    """The message as a resuming client gets it: with its offset in front.

    The framer a registry calls once per log entry (see
    :meth:`geo_ws.delivery.registry.Registry.add`).

    Args:
        message: a text or binary message.
        offset: its offset in the endpoint's log, from 1 on.
    """
    if message.opcode == Opcode.TEXT:
        return Outgoing.encoded(Opcode.TEXT, b"%d:%s" % (offset, message.payload))
    return Outgoing.encoded(Opcode.BINARY, _OFFSET.pack(offset) + bytes(message.payload))


def parse_positioned(data: str | bytes) -> tuple[int, str | bytes] | dict[str, Any]:
    """Read one message from a server, client side, after the :class:`Hello`.

    Returns:
        ``(offset, message)`` for a data message; the decoded object for a control
        message (text starting with ``{``).

    Raises:
        ResumeError: neither (1002).
    """
    if isinstance(data, str):
        if data.startswith("{"):
            return _json_object(data)
        digits, colon, text = data.partition(":")
        if colon and 0 < len(digits) <= 19 and digits.isascii() and digits.isdigit():
            return int(digits), text
        raise ResumeError("a text message without its offset")
    if len(data) < _OFFSET.size:
        raise ResumeError("a binary message without its offset")
    return _OFFSET.unpack_from(data)[0], bytes(data[_OFFSET.size :])


def parse_first(data: str | bytes) -> Start | Resume:
    """Read a client's first message, server side.

    Raises:
        ResumeError: binary (1003), not a start or resume object (1002), or values out
            of bounds (1008).
    """
    if not isinstance(data, str):
        raise ResumeError("the first message must be text", 1003)
    message = _json_object(data)
    kind = message.get("type")
    if kind == "start":
        return Start()
    if kind != "resume":
        raise ResumeError("the first message must be of type start or resume")
    session, epoch, offset = (message.get(name) for name in ("session", "epoch", "offset"))
    if not isinstance(session, str) or not isinstance(epoch, str) or type(offset) is not int:
        raise ResumeError("resume needs a string session and epoch and an integer offset")
    if not 0 < len(session) <= MAX_SESSION_LENGTH or len(epoch) > MAX_SESSION_LENGTH:
        raise ResumeError("resume with a session or epoch of a wrong length", 1008)
    if not 0 <= offset <= MAX_OFFSET:
        raise ResumeError("resume with an offset out of bounds", 1008)
    return Resume(session, epoch, offset)


def parse_hello(data: str | bytes) -> Hello:
    """Read the server's first message, client side.

    Raises:
        ResumeError: it is not a hello (1002).
    """
    if not isinstance(data, str):
        raise ResumeError("the server's first message is not text")
    message = _json_object(data)
    try:
        hello = Hello(
            id=message["id"],
            session=message["session"],
            epoch=message["epoch"],
            offset=message["offset"],
            resumed=message["resumed"],
            recovered=message["recovered"],
            missed=message["missed"],
        )
    except KeyError as exc:
        raise ResumeError(f"the server's hello has no {exc.args[0]}") from None
    if message.get("type") != "hello" or not (
        isinstance(hello.id, str)
        and isinstance(hello.session, str)
        and isinstance(hello.epoch, str)
        and type(hello.offset) is int
        and isinstance(hello.resumed, bool)
        and isinstance(hello.recovered, bool)
        and (hello.missed is None or type(hello.missed) is int)
    ):
        raise ResumeError("the server's first message is not a valid hello")
    return hello


def _json_object(text: str) -> dict[str, Any]:
    """Decode a JSON object.

    Raises:
        ResumeError: ``text`` is not one (1002).
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise ResumeError("not JSON") from None
    if not isinstance(value, dict):
        raise ResumeError("not a JSON object")
    return value
