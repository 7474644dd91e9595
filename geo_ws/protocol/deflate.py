"""permessage-deflate (RFC 7692), sans-I/O: negotiation and the zlib streams of one connection.

:func:`negotiate` reads the client's ``Sec-WebSocket-Extensions`` offers and returns the
response header and a :class:`PerMessageDeflate` holding the agreed parameters. The
protocol layer inflates received messages through it; the connection deflates sent
ones. zlib objects are created on first use, so an idle connection costs nothing more.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

from ..exceptions import PayloadTooBig

__all__ = ["DeflateOptions", "PerMessageDeflate", "negotiate"]

#: What RFC 7692 section 7.2.1 strips from the end of every compressed message.
_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True)
class DeflateOptions:
    """An endpoint's compression settings.

    Args:
        server_max_window_bits: the window of what we compress, 9-15 (zlib cannot
            compress with 8). Smaller saves memory per connection: 2 ** (bits + 2) bytes.
        client_max_window_bits: the window we ask clients to compress with, 8-15, when
            they allow us to choose; what we inflate needs 2 ** bits bytes.
        server_no_context_takeover: compress each message on its own: no memory kept
            between messages, one compressed frame can serve a whole broadcast, worse ratio.
        client_no_context_takeover: ask clients to compress each message on its own.
        memory_level: zlib's memLevel for compressing, 1-9 (2 ** (level + 9) bytes).
        min_size: messages shorter than this many bytes are sent uncompressed.
    """

    server_max_window_bits: int = 12
    client_max_window_bits: int = 12
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    memory_level: int = 5
    min_size: int = 64

    def __post_init__(self) -> None:
        if not 9 <= self.server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be between 9 and 15")
        if not 8 <= self.client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be between 8 and 15")
        if not 1 <= self.memory_level <= 9:
            raise ValueError("memory_level must be between 1 and 9")


class PerMessageDeflate:
    """The agreed parameters and the zlib streams of one connection.

    Args:
        server_window: window bits of what we compress.
        client_window: window bits of what the client compresses.
        server_no_context_takeover: reset our compressor after each message.
        client_no_context_takeover: reset our decompressor after each message.
        memory_level: zlib's memLevel for compressing.
        min_size: messages shorter than this are sent uncompressed.
    """

    def __init__(
        self,
        *,
        server_window: int,
        client_window: int,
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        memory_level: int,
        min_size: int,
    ) -> None:
        self.server_window = server_window
        self.client_window = client_window
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.memory_level = memory_level
        self.min_size = min_size
        self._compressor: _Compressor | None = None
        self._decompressor: _Decompressor | None = None

    @property
    def shareable_key(self) -> tuple[int, int] | None:
        """Connections with the same key may share one compressed frame, else ``None``.

        Only without context takeover does a message compress to the same bytes on
        every connection.
        """
        if not self.server_no_context_takeover:
            return None
        return (self.server_window, self.memory_level)

    # -- sending ---------------------------------------------------------------------

    def compress(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Compress one whole message's payload (RFC 7692 section 7.2.1)."""
        compressor = self._compressor
        if compressor is None:
            compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.server_window, self.memory_level
            )
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        # Without context takeover the compressor is not kept: no memory while idle.
        self._compressor = None if self.server_no_context_takeover else compressor
        return data[:-4] if data.endswith(_TAIL) else data

    # -- receiving -------------------------------------------------------------------

    def decompress(self, data: bytes | memoryview, limit: int | None) -> bytes:
        """Inflate part of a received message; ``limit`` bounds the output.

        Raises:
            PayloadTooBig: the message inflates beyond ``limit`` bytes.
            zlib.error: the data is not a valid deflate stream.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self.client_window)
        if limit is None:
            return decompressor.decompress(data)
        # Asking for one byte more than allowed tells a bomb from a message at the limit.
        out = decompressor.decompress(data, limit + 1)
        if len(out) > limit or decompressor.unconsumed_tail:
            raise PayloadTooBig(f"compressed message inflates beyond the limit of {limit} bytes")
        return out

    def end_message(self, limit: int | None) -> bytes:
        """Inflate what remains of a message once its last frame is in."""
        out = self.decompress(_TAIL, limit)
        if self.client_no_context_takeover:
            self._decompressor = None
        return out


class _Compressor(Protocol):
    """What :func:`zlib.compressobj` returns (its type is private to zlib)."""

    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


class _Decompressor(Protocol):
    """What :func:`zlib.decompressobj` returns (its type is private to zlib)."""

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, /, max_length: int = ...) -> bytes: ...


def _parse_offer(offer: str) -> tuple[str, dict[str, str | None]] | None:
    """Split one extension offer into its name and parameters (None if malformed)."""
    name, *raw_params = (part.strip() for part in offer.split(";"))
    params: dict[str, str | None] = {}
    for raw in raw_params:
        key, sep, value = raw.partition("=")
        key = key.strip().lower()
        if not key or key in params:
            return None  # RFC 7692 section 7: a duplicate parameter declines the offer
        params[key] = value.strip().strip('"') if sep else None
    return name.lower(), params


def _bits(value: str | None) -> int | None:
    if value is None or not value.isdigit() or not 8 <= int(value) <= 15:
        return None
    return int(value)


def negotiate(offers: str, options: DeflateOptions) -> tuple[str, PerMessageDeflate] | None:
    """Accept the first acceptable permessage-deflate offer of a client.

    Args:
        offers: the request's ``Sec-WebSocket-Extensions`` header (all of its values).
        options: the endpoint's settings.

    Returns:
        The ``Sec-WebSocket-Extensions`` response value and the connection's
        :class:`PerMessageDeflate`, or ``None`` when no offer can be accepted.
    """
    for offer in offers.split(","):
        parsed = _parse_offer(offer)
        if parsed is None or parsed[0] != "permessage-deflate":
            continue
        params = parsed[1]
        if set(params) - {
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        }:
            continue  # an unknown parameter declines the offer
        if params.get("server_no_context_takeover", None) is not None or (
            params.get("client_no_context_takeover", None) is not None
        ):
            continue  # these take no value
        server_window = options.server_max_window_bits
        if "server_max_window_bits" in params:
            limit = _bits(params["server_max_window_bits"])
            if limit is None or limit < 9:
                continue  # zlib cannot compress with a window of 8
            server_window = min(server_window, limit)
        client_window = 15  # what a client uses when it may not be told less
        response = ["permessage-deflate"]
        if "client_max_window_bits" in params:
            offered = params["client_max_window_bits"]
            if offered is not None and _bits(offered) is None:
                continue
            client_window = min(options.client_max_window_bits, _bits(offered) or 15)
            response.append(f"client_max_window_bits={client_window}")
        server_no_takeover = options.server_no_context_takeover or (
            "server_no_context_takeover" in params
        )
        client_no_takeover = options.client_no_context_takeover or (
            "client_no_context_takeover" in params
        )
        if server_no_takeover:
            response.append("server_no_context_takeover")
        if client_no_takeover:
            response.append("client_no_context_takeover")
        response.append(f"server_max_window_bits={server_window}")
        return "; ".join(response), PerMessageDeflate(
            server_window=server_window,
            client_window=client_window,
            server_no_context_takeover=server_no_takeover,
            client_no_context_takeover=client_no_takeover,
            memory_level=options.memory_level,
            min_size=options.min_size,
        )
    return None
