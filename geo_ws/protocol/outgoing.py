"""A message to send, encoded once however many connections it goes to.

No I/O: the connection layer writes :attr:`Outgoing.frame` (or its deflated variant) to
sockets, the delivery layer hands one :class:`Outgoing` to every receiver of a broadcast,
and the broker envelope turns into one.
"""

from __future__ import annotations

from .deflate import PerMessageDeflate
from .frames import BytesLike, Opcode, encode_frame

__all__ = ["Outgoing"]


class Outgoing:
    """One message on its way to one or many connections, encoded once.

    A broadcast builds one and hands it to every connection: the frame bytes are
    built on first use and shared.

    Args:
        data: ``str`` for a text message, anything bytes-like for a binary one.

    Raises:
        TypeError: ``data`` is of another type.
    """

    __slots__ = ("_deflated", "_frame", "opcode", "payload")

    def __init__(self, data: str | bytes | bytearray | memoryview) -> None:
        if isinstance(data, str):
            self.opcode = Opcode.TEXT
            self.payload: bytes | bytearray | memoryview = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self.opcode = Opcode.BINARY
            self.payload = data
        else:
            raise TypeError(
                f"can only send str (text) or bytes-like (binary), not {type(data).__name__}"
            )
        self._frame: bytes | None = None
        self._deflated: dict[tuple[int, int], bytes] | None = None

    @classmethod
    def encoded(cls, opcode: Opcode, payload: BytesLike) -> Outgoing:
        """A message whose payload is encoded already (text received from another
        process): taken as is, neither decoded nor checked.

        Args:
            opcode: :attr:`Opcode.TEXT` (then ``payload`` must be UTF-8) or
                :attr:`Opcode.BINARY`.
            payload: the message's bytes.
        """
        message = cls.__new__(cls)
        message.opcode = opcode
        message.payload = payload
        message._frame = None
        message._deflated = None
        return message

    @property
    def frame(self) -> bytes:
        """The whole frame, uncompressed and unmasked (a server's)."""
        if self._frame is None:
            self._frame = encode_frame(self.opcode, self.payload)
        return self._frame

    def frame_for(self, deflate: PerMessageDeflate | None) -> bytes:
        """The frame for a connection with this permessage-deflate state (or none)."""
        if deflate is None or len(self.payload) < deflate.min_size:
            return self.frame
        # Without context takeover every connection with the same parameters gets the
        # same bytes: compress once per key. With it, each connection's own stream.
        key = deflate.shareable_key
        cache = self._deflated
        if key is not None and cache is not None and key in cache:
            return cache[key]
        frame = encode_frame(self.opcode, deflate.compress(self.payload), rsv1=True)
        if key is not None:
            if cache is None:
                cache = self._deflated = {}
            cache[key] = frame
        return frame
