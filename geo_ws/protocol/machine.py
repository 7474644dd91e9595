"""Sans-I/O WebSocket connection, both directions (RFC 6455 sections 5 and 7), either side.

:class:`Protocol` does no I/O: the connection layer feeds it the bytes it reads with
:meth:`~Protocol.receive_data` and the end of the stream with :meth:`~Protocol.receive_eof`, and
acts on the events they return. To send, it asks the protocol for the bytes of each frame
(:meth:`~Protocol.send_text`, :meth:`~Protocol.send_binary`, :meth:`~Protocol.send_data`,
:meth:`~Protocol.send_ping`, :meth:`~Protocol.send_pong`, :meth:`~Protocol.send_close`), which
are masked on the client side and checked against the state (no frame after our Close), and
writes them. It imports neither gevent, nor socket, nor Flask, so it runs the same under any
I/O model and is tested without sockets.

It parses frames, reassembles fragmented messages, validates UTF-8 and enforces the message size
limit, and it tracks the closing handshake. A server's broadcast is encoded once: an
:class:`~geo_ws.protocol.outgoing.Outgoing` handed to :meth:`~Protocol.send_data` of every
receiving connection returns the same shared bytes.

Typical use by the connection layer::

    for event in protocol.receive_data(sock.recv(65536)):
        if isinstance(event, Message):
            handle(event.data)
        elif isinstance(event, Ping):
            sock.sendall(protocol.send_pong(event.payload))
        elif isinstance(event, Close):
            sock.sendall(protocol.send_close(...))   # answer the closing handshake
        elif isinstance(event, Failure):
            sock.sendall(protocol.send_close(event.code, event.reason))
            sock.close()                             # fail the connection
"""

from __future__ import annotations

import codecs
import enum
import os
import zlib
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..exceptions import InvalidState, InvalidUTF8, PayloadTooBig, ProtocolError
from .deflate import PerMessageDeflate
from .frames import (
    EXTERNAL_CLOSE_CODES,
    MAX_CONTROL_PAYLOAD_SIZE,
    BytesLike,
    CloseCode,
    Opcode,
    apply_mask,
    encode_close,
    encode_frame,
    parse_close,
)
from .outgoing import Outgoing

__all__ = [
    "CLOSED",
    "CLOSING",
    "OPEN",
    "Close",
    "Event",
    "Failure",
    "Message",
    "Ping",
    "Pong",
    "Protocol",
    "State",
]


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message, reassembled from its fragments.

    Attributes:
        data: ``str`` for a text message, ``bytes`` for a binary message.
    """

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A Ping frame; the connection layer answers with a Pong carrying the same payload.

    Attributes:
        payload: the application data of the ping, at most 125 bytes.
    """

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A Pong frame, usually the answer to a ping we sent.

    Attributes:
        payload: the application data of the pong, at most 125 bytes.
    """

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer closed the connection, or the TCP connection ended without a Close frame.

    After a Close frame (``close_received`` is True) the connection layer answers with
    :meth:`Protocol.send_close` if it has not sent its own Close yet. After an end of stream,
    the code is 1006 and nothing can be sent any more.

    Attributes:
        code: the peer's close code; 1005 if its Close frame had no code, 1006 if the TCP
            connection ended without a Close frame.
        reason: the peer's close reason, possibly empty.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The peer broke the protocol: the connection must be failed (RFC 6455 section 7.1.7).

    The connection layer sends ``send_close(code, reason)`` and closes the TCP connection without
    waiting for the peer's Close: the protocol discards everything received after the error.

    Attributes:
        code: the close code to send (1002, 1007, 1009, or 1011 for a bug in geo_ws).
        reason: a short explanation for the peer, under 123 bytes of UTF-8.
    """

    code: int
    reason: str


Event: TypeAlias = Message | Ping | Pong | Close | Failure
"""Everything :meth:`Protocol.receive_data` and :meth:`Protocol.receive_eof` return."""


# --- state --------------------------------------------------------------------------------------


class State(enum.Enum):
    """State of a WebSocket connection (RFC 6455 section 4.1 and 7)."""

    OPEN = 1
    """Messages flow both ways."""
    CLOSING = 2
    """A Close frame was sent or received (or the connection failed); the other is awaited."""
    CLOSED = 3
    """Both Close frames were exchanged, or the TCP connection ended."""


OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED


# Module-level constants are faster than enum attribute lookups on the hot path.
_CONT = int(Opcode.CONT)
_TEXT = int(Opcode.TEXT)
_BINARY = int(Opcode.BINARY)
_CLOSE = int(Opcode.CLOSE)
_PING = int(Opcode.PING)
_PONG = int(Opcode.PONG)
# Events carry plain ints, whether a code came from the wire or from here.
_NO_STATUS_RCVD = int(CloseCode.NO_STATUS_RCVD)
_ABNORMAL_CLOSURE = int(CloseCode.ABNORMAL_CLOSURE)
_INTERNAL_ERROR = int(CloseCode.INTERNAL_ERROR)

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
# How many pieces of a message are joined into one part (see Protocol.__init__).
_JOIN_COUNT = 1024

# Masks come from os.urandom, drawn 4 KiB at a time: one getrandom call per 1024 frames.
_mask_pool = b""
_mask_pos = 0


def _whole_message(text: bool, data: bytes) -> Message:
    """The message of one whole unfragmented frame's (unmasked) payload.

    Raises:
        InvalidUTF8: a text message that is not UTF-8.
    """
    if not text:
        return Message(data)
    try:
        return Message(data.decode())
    except UnicodeDecodeError:
        raise InvalidUTF8("invalid UTF-8 in text message") from None


def _new_mask() -> bytes:
    """Four fresh random bytes: the masking key of one frame (RFC 6455 section 5.3)."""
    global _mask_pool, _mask_pos
    position = _mask_pos
    if position >= len(_mask_pool):
        _mask_pool = os.urandom(4096)
        position = 0
    _mask_pos = position + 4
    return _mask_pool[position : position + 4]


# --- protocol -----------------------------------------------------------------------------------


class Protocol:
    """Both directions and the closing handshake of one WebSocket connection.

    Feed it bytes with :meth:`receive_data`; it returns the events they complete, in wire order.
    Protocol errors never raise: they end the list with a :class:`Failure`, after which every
    input is ignored. The ``send_*`` methods return the bytes of the frame to write.

    Args:
        max_message_size: largest message accepted, in bytes, counted across fragments; None for
            no limit. A frame header announcing more fails the connection with 1009 at once.
        client: True on the client side: frames received must then be unmasked (servers send
            unmasked frames) and every frame sent is masked with a fresh random key.
        deflate: the permessage-deflate state negotiated for this connection (server side):
            messages whose first frame has RSV1 set are inflated before UTF-8 validation, and
            ``max_message_size`` then bounds their inflated size.
    """

    __slots__ = (
        "_client",
        "_compressed",
        "_decoder",
        "_deflate",
        "_discard",
        "_eof",
        "_fin",
        "_inflated",
        "_mask",
        "_mask_bit",
        "_msg_opcode",
        "_msg_size",
        "_offset",
        "_remaining",
        "_parts",
        "_pieces",
        "_rest",
        "allowed_rsv_bits",
        "close_received",
        "close_sent",
        "max_message_size",
        "parser_exc",
        "state",
    )

    def __init__(
        self,
        *,
        max_message_size: int | None = 2**20,
        client: bool = False,
        deflate: PerMessageDeflate | None = None,
    ) -> None:
        self.max_message_size = max_message_size
        """Largest message accepted, in bytes; None for no limit."""
        self.allowed_rsv_bits = 0 if deflate is None else 0x40
        """RSV bits a negotiated extension gives a meaning to, as a mask of the first header byte.

        Without an extension any reserved bit fails the connection with 1002; permessage-deflate
        (RFC 7692) gives RSV1 of a message's first frame the meaning "compressed".
        """
        self._deflate = deflate
        self._compressed = False  # whether the message in progress is compressed
        self._inflated = 0  # bytes it has inflated to so far, for max_message_size
        self.state = OPEN
        """The :class:`State` of the connection."""
        self.close_sent = False
        """Whether :meth:`send_close` was called."""
        self.close_received = False
        """Whether the peer's Close frame was received."""
        self.parser_exc: Exception | None = None
        """The error behind the :class:`Failure` event, if any; for logs only."""

        self._client = client
        # Clients must mask every frame, servers must not (RFC 6455 section 5.1).
        self._mask_bit = 0 if client else 0x80
        # Unparsed bytes: an incomplete frame header or control frame, never more than
        # 14 + 125 bytes, because data frame payloads are consumed as they arrive.
        self._rest = b""
        # Set after a Close frame, a failure or the end of the stream: input is then ignored.
        self._discard = False
        self._eof = False

        # The data frame whose payload is being received.
        self._remaining = 0  # payload bytes not received yet; 0 between frames
        self._offset = 0  # payload bytes received, to rotate the mask for the next chunk
        self._mask: bytes | None = None
        self._fin = False

        # The message being reassembled from several frames or chunks.
        self._msg_opcode = _CONT  # _TEXT or _BINARY while a message is in progress
        self._msg_size = 0  # announced so far, to enforce max_message_size from headers
        # Its content so far (str for a text message, bytes for a binary one): the pieces
        # received since the last _JOIN_COUNT, and those joined in parts of _JOIN_COUNT.
        # An object per fragment would cost far more than tiny fragments' bytes (36 times
        # a message sent 2 bytes at a time).
        self._parts: list[Any] = []
        self._pieces: list[Any] = []
        # Decoding as bytes arrive finds invalid UTF-8 early, and each byte is decoded once.
        # Created on first use: an idle connection should cost little.
        self._decoder: codecs.IncrementalDecoder | None = None

    # --- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse bytes received from the peer.

        Bytes may be split anywhere: the events are the same whatever the chunking.

        Args:
            data: bytes read from the network, possibly empty (any bytes-like object;
                ``bytes`` avoids a copy).

        Returns:
            The events these bytes complete, in wire order. A protocol error ends the list with
            a :class:`Failure`; the state is then :data:`CLOSING` and further input is ignored.
            After the peer's :class:`Close` or :meth:`receive_eof`, returns [].
        """
        if self._discard or not data:
            return []
        if self._rest:
            # _rest is small (see __init__), so this copy is cheap.
            data = self._rest + data
            self._rest = b""
        elif type(data) is not bytes:
            data = bytes(data)
        events: list[Event] = []
        try:
            self._parse(data, events)
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason, exc, events)
        except Exception as exc:
            # A bug in geo_ws: don't tell the peer details, which may be security-sensitive.
            self._fail(_INTERNAL_ERROR, "internal error", exc, events)
        return events

    def receive_eof(self) -> list[Event]:
        """Take note that the peer closed the TCP connection.

        Returns:
            ``[Close(1006, "")]`` if no Close frame was received (an abnormal closure, also when
            the stream ends in the middle of a frame), else []. The state is then :data:`CLOSED`.
        """
        if self._eof:
            return []
        self._eof = True
        self._discard = True
        self._rest = b""
        self.state = CLOSED
        if self.close_received:
            return []
        return [Close(_ABNORMAL_CLOSURE, "")]

    # --- output ---------------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        """Raise unless frames may still be sent: our Close must be the last frame.

        Raises:
            InvalidState: a Close frame was sent, or the connection is closed.
        """
        if self.close_sent:
            raise InvalidState("a Close frame was already sent")
        if self.state is CLOSED:
            raise InvalidState("the connection is closed")

    def send_text(self, data: str) -> bytes:
        """Build the frame of a text message.

        Returns:
            The frame: unmasked for a server (compressed if permessage-deflate was negotiated
            and the message is large enough), masked with a fresh random key for a client.

        Raises:
            InvalidState: a Close frame was sent, or the connection is closed.
        """
        if self._client:
            if self.close_sent or self.state is CLOSED:  # tested inline: once per message
                self._check_can_send()  # raises
            return encode_frame(_TEXT, data.encode(), mask=_new_mask())
        return self.send_data(Outgoing(data))

    def send_binary(self, data: BytesLike) -> bytes:
        """Build the frame of a binary message; as :meth:`send_text` otherwise.

        Raises:
            InvalidState: a Close frame was sent, or the connection is closed.
        """
        if self._client:
            if self.close_sent or self.state is CLOSED:
                self._check_can_send()  # raises
            return encode_frame(_BINARY, data, mask=_new_mask())
        return self.send_data(Outgoing(data))

    def send_data(self, message: Outgoing) -> bytes:
        """Build the frame of a message prepared once for many connections.

        On the server side the bytes are the message's own, shared by every connection with
        the same permessage-deflate parameters (see :meth:`Outgoing.frame_for`): a broadcast
        is encoded once. A client masks the payload with a key of its own.

        Raises:
            InvalidState: a Close frame was sent, or the connection is closed.
        """
        if self.close_sent or self.state is CLOSED:  # tested inline: once per receiver
            self._check_can_send()  # raises
        if self._client:
            return encode_frame(message.opcode, message.payload, mask=_new_mask())
        return message.frame_for(self._deflate)

    def send_ping(self, payload: BytesLike = b"") -> bytes:
        """Build a Ping frame.

        Raises:
            InvalidState: a Close frame was sent, or the connection is closed.
            ValueError: ``payload`` is longer than 125 bytes.
        """
        return self._send_control(_PING, payload)

    def send_pong(self, payload: BytesLike = b"") -> bytes:
        """Build a Pong frame, the answer to a :class:`Ping` (with its payload).

        Raises:
            InvalidState: a Close frame was sent, or the connection is closed.
            ValueError: ``payload`` is longer than 125 bytes.
        """
        return self._send_control(_PONG, payload)

    def _send_control(self, opcode: int, payload: BytesLike) -> bytes:
        self._check_can_send()
        return encode_frame(opcode, payload, mask=_new_mask() if self._client else None)

    def send_close(self, code: int | None = 1000, reason: str = "") -> bytes:
        """Build our Close frame, to start or to answer the closing handshake.

        Args:
            code: the close code: one a peer may send (see
                :data:`~geo_ws.protocol.frames.EXTERNAL_CLOSE_CODES`), or None for a Close
                frame without a payload. 1005 ("no status code") also sends an empty payload,
                so that a received ``Close(1005, "")`` can be echoed as is.
            reason: why the connection is closed; cut to fit in the frame.

        Returns:
            The frame to send: unmasked for a server, masked with a random key for a client.
            The state is then :data:`CLOSED` if the peer's Close was received, else
            :data:`CLOSING`.

        Raises:
            InvalidState: if a Close frame was already sent, or the connection is closed.
            ValueError: if ``code`` may not be sent in a Close frame (1004, 1006, 1015,
                below 1000, 1016-2999, 5000 and above), or a reason comes without a code.
        """
        self._check_can_send()
        if code == _NO_STATUS_RCVD:
            code = None
        elif code is not None and code not in EXTERNAL_CLOSE_CODES:
            raise ValueError(f"close code {code} may not be sent in a Close frame")
        frame = self._send_control(_CLOSE, encode_close(code, reason))
        self.close_sent = True
        self.state = CLOSED if self.close_received else CLOSING
        return frame

    # --- parser ---------------------------------------------------------------------------------

    def _parse(self, buf: bytes, events: list[Event]) -> None:
        """Parse the frames in ``buf``, append their events, and keep what is incomplete.

        Raises:
            ProtocolError: on any protocol violation; the events before it are in ``events``.
        """
        size = len(buf)
        view = memoryview(buf)
        pos = 0
        append = events.append

        remaining = self._remaining
        if remaining:
            # Inside a data frame: take what has arrived, so that nothing big is buffered and
            # invalid UTF-8 is found before the rest of the frame arrives. A frame is left
            # unfinished only when a chunk ends inside it, so this is only needed here.
            pos = remaining if size >= remaining else size
            remaining -= pos
            self._remaining = remaining
            self._payload(view[:pos])
            if remaining:
                return
            if self._fin:
                append(self._finish())

        reserved = 0x70 & ~self.allowed_rsv_bits
        mask_bit = self._mask_bit
        header_size = 6 if mask_bit else 2
        limit = self.max_message_size
        # Frames of the fast path carry at most 125 bytes; check the limit there only if needed.
        small_ok = limit is None or limit >= 125
        in_message = self._msg_opcode != _CONT
        unmask = apply_mask

        while size - pos >= 2:
            first = buf[pos]
            second = buf[pos + 1]
            length = second & 0x7F

            # Fast path: a whole unfragmented message of at most 125 bytes, the usual case.
            # 0x81 and 0x82 are FIN + TEXT and FIN + BINARY without reserved bits.
            if (
                (first == 0x81 or first == 0x82)
                and length < 126
                and second & 0x80 == mask_bit
                and not in_message
                and small_ok
            ):
                start = pos + header_size
                end = start + length
                if end <= size:
                    # Slicing bytes beats a memoryview for such small payloads.
                    data = buf[start:end]
                    if mask_bit:
                        data = unmask(data, buf[start - 4 : start])
                    pos = end
                    append(_whole_message(first == 0x81, data))
                    continue

            # Frame header (RFC 6455 section 5.2): check each field as soon as it is here.
            if first & reserved:
                raise ProtocolError("reserved bits set")
            opcode = first & 0x0F
            fin = first & 0x80
            rsv1 = first & 0x40  # only ever set here when permessage-deflate allows it
            if rsv1 and (opcode == _CONT or opcode >= _CLOSE):
                raise ProtocolError("reserved bit RSV1 set on a continuation or control frame")
            if opcode >= _CLOSE:
                if opcode > _PONG:
                    raise ProtocolError(f"reserved opcode 0x{opcode:X}")
                if not fin:
                    raise ProtocolError("fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD_SIZE:
                    raise ProtocolError("control frame payload over 125 bytes")
            elif opcode > _BINARY:
                raise ProtocolError(f"reserved opcode 0x{opcode:X}")
            elif opcode == _CONT:
                if not in_message:
                    raise ProtocolError("continuation frame without a message to continue")
            elif in_message:
                raise ProtocolError("new data frame before the fragmented message ended")
            if second & 0x80 != mask_bit:
                raise ProtocolError(
                    "unmasked frame from client" if mask_bit else "masked frame from server"
                )
            start = pos + 2
            if length >= 126:
                if length == 126:
                    if size - pos < 4:
                        break
                    length = (buf[start] << 8) | buf[start + 1]
                    start += 2
                else:
                    if size - pos < 10:
                        break
                    length = int.from_bytes(buf[start : start + 8], "big")
                    start += 8
                    if length >> 63:
                        raise ProtocolError("frame length with the most significant bit set")
            if opcode < _CLOSE and limit is not None:
                # Decided on the header: never buffer a message past the limit.
                total = self._msg_size + length if opcode == _CONT else length
                if total > limit:
                    # Only the last frame tells the whole size of a fragmented message.
                    at_least = "" if fin else "at least "
                    raise PayloadTooBig(
                        f"message of {at_least}{total} bytes exceeds the limit of {limit}"
                    )
            mask: bytes | None = None
            if mask_bit:
                start += 4
                if start > size:
                    break
                mask = buf[start - 4 : start]
            end = start + length

            if opcode >= _CLOSE:
                # Control frames are at most 125 bytes: wait until one is complete.
                if end > size:
                    break
                payload = unmask(buf[start:end], mask) if mask else buf[start:end]
                pos = end
                if opcode == _PING:
                    append(Ping(payload))
                elif opcode == _PONG:
                    append(Pong(payload))
                else:
                    code, reason = parse_close(payload)
                    append(Close(code, reason))
                    self.close_received = True
                    self.state = CLOSED if self.close_sent else CLOSING
                    # RFC 6455 section 5.5.1: nothing follows a Close frame.
                    self._discard = True
                    return
                continue

            if fin and opcode and end <= size and not rsv1:
                # A whole unfragmented message the fast path did not take (over 125 bytes).
                data = unmask(view[start:end], mask) if mask else buf[start:end]
                pos = end
                append(_whole_message(opcode == _TEXT, data))
                continue

            # A fragment, or a frame that has not fully arrived: feed the payload to the message.
            if opcode:
                self._msg_opcode = opcode
                self._msg_size = length
                self._compressed = bool(rsv1)
                self._inflated = 0
            else:
                self._msg_size += length
            self._fin = bool(fin)
            self._mask = mask
            self._offset = 0
            if end > size:
                # The rest of the frame comes with the next chunks: take what is here and stop.
                self._remaining = end - size
                if size > start:
                    self._payload(view[start:size])
                return
            if end > start:
                self._payload(view[start:end])
            pos = end
            if fin:
                append(self._finish())
            in_message = self._msg_opcode != _CONT

        self._rest = buf[pos:]

    def _payload(self, chunk: memoryview) -> None:
        """Unmask, validate and store part of the payload of the current data frame.

        Raises:
            InvalidUTF8: if the text received so far cannot be the start of valid UTF-8.
        """
        mask = self._mask
        data: bytes | memoryview
        if mask is not None:
            rotation = self._offset & 3
            if rotation:
                # The mask continues where the previous chunk of this frame left it.
                mask = mask[rotation:] + mask[:rotation]
            data = apply_mask(chunk, mask)
            self._offset += len(chunk)
        else:
            data = chunk
        if self._compressed:
            data = self._inflate(data, final=False)
        self._consume(data)

    def _inflate(self, data: bytes | memoryview, *, final: bool) -> bytes:
        """Inflate part of a compressed message, or its end (``final``), within the limit."""
        deflate = self._deflate
        assert deflate is not None  # _compressed is only set when deflate was negotiated
        limit = self.max_message_size
        left = None if limit is None else limit - self._inflated
        try:
            out = deflate.end_message(left) if final else deflate.decompress(data, left)
        except zlib.error:
            raise ProtocolError("invalid compressed data", 1007) from None
        except PayloadTooBig:
            raise PayloadTooBig(
                f"compressed message inflates beyond the limit of {limit} bytes"
            ) from None
        self._inflated += len(out)
        return out

    def _consume(self, data: bytes | memoryview) -> None:
        """Validate and store part of the (unmasked, inflated) payload of the current message.

        Raises:
            InvalidUTF8: if the text received so far cannot be the start of valid UTF-8.
        """
        if not data:
            return
        if self._msg_opcode == _TEXT:
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = _Utf8Decoder()
            try:
                text = decoder.decode(data, False)
            except UnicodeDecodeError:
                raise InvalidUTF8("invalid UTF-8 in text message") from None
            if text:
                self._store(text)
            if data[-1] >= 0x80:
                # CPython's decoder only rejects a surrogate (ED A0-BF) at its third byte;
                # no completion of those two bytes is valid UTF-8, so fail now.
                pending = decoder.getstate()[0]
                if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                    raise InvalidUTF8("invalid UTF-8 in text message")
        else:
            self._store(bytes(data))

    def _store(self, piece: str | bytes) -> None:
        """Add a piece to the message in progress, joining pieces by _JOIN_COUNT."""
        pieces = self._pieces
        pieces.append(piece)
        if len(pieces) == _JOIN_COUNT:
            joiner = "" if self._msg_opcode == _TEXT else b""
            self._parts.append(joiner.join(pieces))
            pieces.clear()

    def _finish(self) -> Message:
        """Assemble the message whose last frame was just received.

        Raises:
            InvalidUTF8: if a text message ends in the middle of a character.
        """
        message: Message
        if self._compressed:
            self._consume(self._inflate(b"", final=True))
            self._compressed = False
        parts = self._parts
        parts += self._pieces
        self._pieces.clear()
        if self._msg_opcode == _TEXT:
            try:
                tail = self._decoder.decode(b"", True) if self._decoder is not None else ""
            except UnicodeDecodeError:
                raise InvalidUTF8("invalid UTF-8 in text message") from None
            if tail:
                parts.append(tail)
            message = Message(parts[0] if len(parts) == 1 else "".join(parts))
        else:
            message = Message(parts[0] if len(parts) == 1 else b"".join(parts))
        parts.clear()
        self._msg_opcode = _CONT
        self._msg_size = 0
        return message

    def _fail(self, code: int, reason: str, exc: Exception, events: list[Event]) -> None:
        """End ``events`` with a :class:`Failure` and ignore all further input."""
        self.parser_exc = exc
        events.append(Failure(code, reason))
        self._discard = True
        self._rest = b""
        # Drop the partial message: nothing will complete it.
        self._parts.clear()
        self._pieces.clear()
        if self.state is OPEN:
            self.state = CLOSING
