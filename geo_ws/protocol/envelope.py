"""The envelope: how a send travels between processes on a broker's channels.

No I/O: :class:`~geo_ws.delivery.broker.RedisBroker` publishes and receives envelopes,
:class:`~geo_ws.delivery.emitter.Emitter` only publishes them (from a process without
gevent).

Channels, in a namespace ``NS`` (default ``geo_ws``): ``NS:all`` carries broadcasts and
room messages of every endpoint (:func:`channel_all`), ``NS:node:NODE`` carries
``send_to`` and ``close`` for the connections of one node (:func:`channel_of`), and
``NS:ep:KEY`` everything sent to an endpoint with recovery (:func:`channel_of_endpoint`).
Each channel has a log (see :mod:`geo_ws.delivery.history`): what is published on it
is the envelope tagged with its position in the log (:func:`tag`, :func:`untag`).
Each publisher also numbers what it sends on each channel (:class:`Sequencer`), so that
receivers drop a publish retried twice and count what never reached the log.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from ..exceptions import ProtocolError
from .frames import EXTERNAL_CLOSE_CODES, Opcode, encode_close, parse_close
from .outgoing import Outgoing

__all__ = [
    "VERSION",
    "Envelope",
    "Kind",
    "Sequencer",
    "channel_all",
    "channel_of",
    "channel_of_endpoint",
    "close_payload",
    "recovery_endpoints",
    "tag",
    "untag",
]

#: The envelope format this module writes; others are refused (2: tagged with positions).
VERSION = 2

# version, kind, opcode, sequence number, length of the origin.
_HEADER = struct.Struct("!BBBQB")
_LENGTH = struct.Struct("!H")


def channel_all(namespace: str) -> str:
    """The channel of broadcasts and room messages in ``namespace``."""
    return f"{namespace}:all"


def channel_of(namespace: str, node: str) -> str:
    """The channel of ``send_to`` and ``close`` for the connections of ``node``."""
    return f"{namespace}:node:{node}"


def channel_of_endpoint(namespace: str, endpoint: str) -> str:
    """The channel of everything sent to the clients of a recovery endpoint."""
    return f"{namespace}:ep:{endpoint}"


def recovery_endpoints(namespace: str) -> str:
    """The Redis set of the endpoints with recovery (where an Emitter sends to them)."""
    return f"{namespace}:recovery"


def tag(epoch: str, offset: int, envelope: bytes) -> bytes:
    """What is published for an envelope at ``offset`` of a log of ``epoch``:
    ``EPOCH:OFFSET:ENVELOPE`` (the Lua script of :mod:`geo_ws.delivery.history` makes it)."""
    return b"%s:%d:%s" % (epoch.encode("ascii"), offset, envelope)


def untag(data: bytes) -> tuple[str, int, bytes]:
    """The epoch, offset and envelope of a published message.

    Raises:
        ValueError: it is not tagged.
    """
    first = data.find(b":")
    second = data.find(b":", first + 1)
    if first < 1 or second < 0:
        raise ValueError("a message without its position in a log")
    try:
        epoch = data[:first].decode("ascii")
        offset = int(data[first + 1 : second])
    except (UnicodeDecodeError, ValueError):
        raise ValueError("a message with a malformed position") from None
    return epoch, offset, data[second + 1 :]


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a :attr:`Kind.CLOSE` envelope: a Close frame's.

    Raises:
        ValueError: ``code`` may not be sent in a Close frame (checked before anything
            leaves the process: the receiving node could not refuse it to anyone).
    """
    if code not in EXTERNAL_CLOSE_CODES:
        raise ValueError(
            f"close code {code} may not be sent: use 1000-1003, 1007-1014 or 3000-4999"
        )
    return encode_close(code, reason)


class Kind(enum.IntEnum):
    """What an envelope asks the receiving node to do."""

    BROADCAST = 1
    """Send to every connection of the endpoint."""
    ROOM = 2
    """Send to the members of a room (the target) of the endpoint."""
    SEND_TO = 3
    """Send to one connection (the target is its id)."""
    CLOSE = 4
    """Close one connection (the target is its id; the payload is a Close payload)."""


_KINDS = frozenset(Kind)


@dataclass(frozen=True)
class Envelope:
    """One send on its way between processes.

    On the wire: ``version, kind, opcode`` (one byte each), ``seq`` (8 bytes), the
    origin (1-byte length + ASCII), the endpoint and the target (2-byte length +
    UTF-8 each), then the payload as is: binary messages are not re-encoded.
    """

    kind: Kind
    opcode: int
    """:attr:`Opcode.TEXT` or :attr:`Opcode.BINARY` (:attr:`Opcode.CLOSE` for a close)."""
    endpoint: str
    """The endpoint's name across processes, its URL rule (``""``: any endpoint)."""
    target: str
    """The room or connection id (``""`` for a broadcast)."""
    payload: bytes
    origin: str = ""
    """Who published it: one broker or emitter in one process."""
    seq: int = 0
    """The origin's number for this envelope on its channel, from 1 on."""

    def encode(self) -> bytes:
        """The bytes to publish.

        Raises:
            ValueError: the origin exceeds 255 bytes, the endpoint or target 65535.
        """
        origin = self.origin.encode("ascii")
        endpoint = self.endpoint.encode()
        target = self.target.encode()
        if len(origin) > 255 or len(endpoint) > 0xFFFF or len(target) > 0xFFFF:
            raise ValueError("envelope origin, endpoint or target too long")
        return b"".join(
            (
                _HEADER.pack(VERSION, self.kind, self.opcode, self.seq, len(origin)),
                origin,
                _LENGTH.pack(len(endpoint)),
                endpoint,
                _LENGTH.pack(len(target)),
                target,
                self.payload,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse published bytes, and check that they make sense for a receiving node.

        Raises:
            ValueError: saying what is wrong: truncated data, another version, an unknown
                kind, or an opcode or payload that does not fit the kind (a text payload
                that is not UTF-8, a close payload no Close frame may carry).
        """
        try:
            version, kind, opcode, seq, size = _HEADER.unpack_from(data)
            if version != VERSION:
                raise ValueError(f"envelope version {version}, expected {VERSION}")
            if kind not in _KINDS:
                raise ValueError(f"unknown envelope kind {kind}")
            offset = _HEADER.size
            origin = data[offset : offset + size].decode("ascii")
            offset += size
            fields = []
            for _ in range(2):
                (size,) = _LENGTH.unpack_from(data, offset)
                offset += _LENGTH.size
                if offset + size > len(data):
                    raise ValueError("truncated envelope")
                fields.append(data[offset : offset + size].decode())
                offset += size
        except struct.error:
            raise ValueError(f"truncated envelope ({len(data)} bytes)") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"undecodable origin, endpoint or target: {error}") from None
        envelope = cls(Kind(kind), opcode, fields[0], fields[1], data[offset:], origin, seq)
        envelope._check_payload()
        return envelope

    def _check_payload(self) -> None:
        """Refuse what a receiving node could not send or close with.

        Raises:
            ValueError: the opcode or payload does not fit the kind.
        """
        if self.kind is Kind.CLOSE:
            if self.opcode != Opcode.CLOSE:
                raise ValueError(f"a CLOSE envelope with opcode {self.opcode}")
            if not self.payload:
                raise ValueError("a CLOSE envelope without a close code")
            try:
                parse_close(self.payload)
            except ProtocolError as error:
                raise ValueError(f"a CLOSE envelope with a bad payload: {error}") from None
        elif self.opcode == Opcode.TEXT:
            try:
                self.payload.decode()
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"a {self.kind.name} envelope with invalid UTF-8 in its text payload "
                    f"(byte {error.start})"
                ) from None
        elif self.opcode != Opcode.BINARY:
            raise ValueError(f"a {self.kind.name} envelope with opcode {self.opcode}")

    def outgoing(self) -> Outgoing:
        """The message to hand to local connections (the payload is not copied).

        The payload is not checked either: call it on what :meth:`decode` returned.
        """
        return Outgoing.encoded(Opcode(self.opcode), self.payload)


class Sequencer:
    """The numbers one publisher gives its envelopes: 1, 2, 3... on each channel.

    Args:
        node: the publisher's process (:func:`geo_ws.delivery.ids.node_id`), the
            first part of its origin.
    """

    def __init__(self, node: str) -> None:
        self.origin = f"{node}/{uuid.uuid4().hex[:8]}"
        """This publisher's name in envelopes."""
        self._last: dict[str, int] = {}

    def envelope(
        self, channel: str, kind: Kind, endpoint: str, target: str, opcode: int, payload: Any
    ) -> bytes:
        """Number an envelope for ``channel`` and encode it."""
        seq = self._last.get(channel, 0) + 1
        self._last[channel] = seq
        return Envelope(kind, opcode, endpoint, target, bytes(payload), self.origin, seq).encode()
