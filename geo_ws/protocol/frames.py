"""WebSocket wire format (RFC 6455 section 5): opcodes, close codes, masking, frame encoding.

This module does no I/O: it turns values into bytes and bytes into values. It is shared by
:mod:`~geo_ws.protocol.machine`, which parses what peers send, and by the connection layer,
which sends frames built with :func:`encode_frame` (a server encodes a broadcast frame once
and writes the same bytes to every client, because server frames are not masked).
"""

from __future__ import annotations

import enum
import importlib
import struct
from collections.abc import Callable
from typing import Final, Literal, TypeAlias

from ..exceptions import InvalidUTF8, ProtocolError

__all__ = [
    "EXTERNAL_CLOSE_CODES",
    "MASK_IMPLEMENTATION",
    "MAX_CLOSE_REASON_SIZE",
    "MAX_CONTROL_PAYLOAD_SIZE",
    "BytesLike",
    "CloseCode",
    "Opcode",
    "apply_mask",
    "encode_close",
    "encode_frame",
    "parse_close",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""Any contiguous bytes buffer accepted where a payload is expected."""

MAX_CONTROL_PAYLOAD_SIZE = 125
"""Largest payload of a control frame (RFC 6455 section 5.5)."""

MAX_CLOSE_REASON_SIZE = MAX_CONTROL_PAYLOAD_SIZE - 2
"""Largest close reason in bytes of UTF-8: what is left of a control payload after the code."""


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2); 0x3-0x7 and 0xB-0xF are reserved."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 section 7.4.1, plus 1012-1014 from the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    # 1004 is reserved.
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


EXTERNAL_CLOSE_CODES: frozenset[int] = frozenset(
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, *range(3000, 5000)]
)
"""Close codes a peer may put in a Close frame: the registered ones that are not reserved for
local use (1004-1006, 1015), and 3000-4999 (libraries, frameworks and applications). Holding the
ranges in one set makes the check a single ``in``."""


# --- masking (RFC 6455 section 5.3) -------------------------------------------------------------

# Up to some 16 KiB one big-integer XOR is the fastest pure-Python mask; from 32 KiB on, four
# bytes.translate calls over every fourth byte are up to twice as fast (CPython 3.11).
_TRANSLATE_THRESHOLD = 32768

# bytes(range(256)) and b"\x01" * 256 as integers: ``_IDENTITY ^ key * _ONES`` is the table that
# XORs every byte with ``key``, built with two integer operations instead of a 256-step loop.
_IDENTITY = int.from_bytes(bytes(range(256)), "little")
_ONES = int.from_bytes(b"\x01" * 256, "little")


def _apply_mask_python(data: BytesLike, mask: bytes) -> bytes:
    """XOR ``data`` with ``mask`` repeated, in pure Python.

    This is the fallback for an install where the C extension could not be built.

    Args:
        data: the bytes to mask or unmask.
        mask: the 4-byte masking key.

    Returns:
        The masked bytes, as long as ``data``.

    Raises:
        ValueError: if ``mask`` is not 4 bytes long.
    """
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    if not isinstance(data, bytes):
        # bytes() also flattens memoryviews of any format or layout into plain octets.
        data = bytes(data)
    size = len(data)
    if size < _TRANSLATE_THRESHOLD:
        if not size:
            return b""
        # One big-integer XOR runs in C; a per-byte loop would be ~100 times slower.
        # Byte order does not matter as long as both sides and the result agree.
        repeated = mask * (size >> 2) + mask[: size & 3]
        masked = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
        return masked.to_bytes(size, "little")
    # Byte i is XORed with mask[i % 4]: each of the four strided slices is one table lookup
    # per byte.
    result = bytearray(size)
    for offset, key in enumerate(mask):
        table = (_IDENTITY ^ key * _ONES).to_bytes(256, "little")
        result[offset::4] = data[offset::4].translate(table)
    return bytes(result)


_apply_mask_c: Callable[[BytesLike, bytes], bytes] | None
try:
    # Built from _mask.c by setup.py; optional, so that installing without a compiler works.
    # Imported by name because import-linter finds modules by their .py files: it would take
    # a static import of this one for an import of the geo_ws package itself.
    _apply_mask_c = importlib.import_module("geo_ws.protocol._mask").apply_mask
except ImportError:
    _apply_mask_c = None

apply_mask: Callable[[BytesLike, bytes], bytes] = (
    _apply_mask_python if _apply_mask_c is None else _apply_mask_c
)
"""XOR ``data`` with the 4-byte ``mask`` repeated; masking twice gives the data back.

Uses geo_ws's C extension ``geo_ws.protocol._mask`` (several GB/s), built when geo_ws is
installed, else a pure-Python fallback (a few hundred MB/s). Returns ``bytes``; raises
``ValueError`` if ``mask`` is not 4 bytes long.
"""

MASK_IMPLEMENTATION: Final[Literal["c", "python"]] = "python" if _apply_mask_c is None else "c"
"""Which :data:`apply_mask` is in use: ``"c"`` for the extension, ``"python"`` for the fallback."""


# --- frames (RFC 6455 section 5.2) --------------------------------------------------------------

# Precompiled: Struct.pack skips parsing the format string on every send.
_pack_short = struct.Struct("!BB").pack
_pack_medium = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def encode_frame(
    opcode: int,
    payload: BytesLike = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Build the bytes of one frame.

    A server sends unmasked frames, so the result can be written as is to any number of
    connections. This runs on every send: it packs the header with one precompiled struct call
    and concatenates once.

    Args:
        opcode: an :class:`Opcode` (or its int value).
        payload: the application data of this frame.
        fin: False for every fragment of a message but the last.
        rsv1: set the RSV1 bit, for permessage-deflate once it is negotiated.
        mask: a 4-byte masking key for frames a client sends; None for server frames.

    Returns:
        The frame: header, masking key if any, and the (masked) payload.

    Raises:
        ValueError: if a control frame is fragmented or its payload exceeds 125 bytes, or if
            ``mask`` is not 4 bytes long.
    """
    length = len(payload)
    first = opcode | 0x80 if fin else opcode
    if rsv1:
        first |= 0x40
    if opcode >= 0x8 and (length > MAX_CONTROL_PAYLOAD_SIZE or not fin):
        raise ValueError("control frames must be final and carry at most 125 bytes")
    mask_bit = 0 if mask is None else 0x80
    if length < 126:
        header = _pack_short(first, mask_bit | length)
    elif length < 0x10000:
        header = _pack_medium(first, mask_bit | 126, length)
    else:
        header = _pack_long(first, mask_bit | 127, length)
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)


# --- close frames (RFC 6455 sections 5.5.1 and 7.4) -------------------------------------------


def encode_close(code: int | None = None, reason: str = "") -> bytes:
    """Build the payload of a Close frame.

    This only encodes: it accepts any 16-bit code, so that tests and clients can also build
    the invalid Close frames a server must reject.
    :meth:`~geo_ws.protocol.machine.Protocol.send_close` is where the codes an endpoint may
    send are enforced.

    The reason is cut to :data:`MAX_CLOSE_REASON_SIZE` bytes of UTF-8, on a character boundary,
    so that the payload fits in a control frame.

    Args:
        code: the close code; None for an empty payload.
        reason: why the connection is closed; must be empty when ``code`` is None.

    Returns:
        b"" without a code, else the 2-byte big-endian code followed by the UTF-8 reason.

    Raises:
        ValueError: if a reason is given without a code, if ``code`` does not fit in 16 bits,
            or if the reason has lone surrogates.
    """
    if code is None:
        if reason:
            raise ValueError("a close reason requires a close code")
        return b""
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"close code {code} does not fit in 16 bits")
    raw = reason.encode()
    if len(raw) > MAX_CLOSE_REASON_SIZE:
        # A prefix of valid UTF-8 can only be broken at its end: "ignore" drops the partial
        # character and nothing else.
        raw = raw[:MAX_CLOSE_REASON_SIZE].decode("utf-8", "ignore").encode()
    return code.to_bytes(2, "big") + raw


def parse_close(payload: bytes) -> tuple[int, str]:
    """Read the code and reason of a received Close frame.

    Args:
        payload: the unmasked payload of the Close frame.

    Returns:
        ``(code, reason)``; ``(1005, "")`` for an empty payload, which carries no code.

    Raises:
        ProtocolError: (1002) for a 1-byte payload or a code a peer may not send (see
            :data:`EXTERNAL_CLOSE_CODES`).
        InvalidUTF8: (1007) if the reason is not valid UTF-8.
    """
    if not payload:
        return 1005, ""  # NO_STATUS_RCVD; plain ints, like every other code returned
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if code not in EXTERNAL_CLOSE_CODES:
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise InvalidUTF8("invalid UTF-8 in close reason") from None
    return code, reason
