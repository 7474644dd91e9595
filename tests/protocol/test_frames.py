"""geo_ws.protocol.frames: the wire format of RFC 6455 section 5, and close payloads (7.4)."""

from __future__ import annotations

import array
import os
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo_ws.exceptions import InvalidUTF8, ProtocolError
from geo_ws.protocol import frames, machine
from geo_ws.protocol.frames import (
    EXTERNAL_CLOSE_CODES,
    CloseCode,
    Opcode,
    apply_mask,
    encode_close,
    encode_frame,
    parse_close,
)
from geo_ws.protocol.machine import Message, Ping, Protocol

from ..helpers import MASK, QUICK
from ..live_apps.process import run_python

#: One payload length per length class: 7-bit (0, 125), 16-bit (126, 65535), 64-bit (65536).
LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]

MaskFunction = Callable[[bytes | bytearray | memoryview, bytes], bytes]

#: Skips a test of the C extension where it was not built; test_c_extension_in_use says so.
NEEDS_C = pytest.mark.skipif(
    frames._apply_mask_c is None, reason="the C extension geo_ws.protocol._mask was not built"
)

IMPLEMENTATIONS: list[object] = [
    pytest.param(frames._apply_mask_python, id="python"),
    pytest.param(frames._apply_mask_c, id="c", marks=NEEDS_C),
]


def reference_mask(data: bytes, mask: bytes) -> bytes:
    """RFC 6455 section 5.3, literally: octet i is XORed with octet i MOD 4 of the mask."""
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))


class TestConstants:
    """5.2 Base Framing Protocol (opcodes) and 7.4.1 Defined Status Codes."""

    def test_opcodes(self) -> None:
        assert [int(op) for op in Opcode] == [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]

    def test_close_codes(self) -> None:
        assert {code.name: int(code) for code in CloseCode} == {
            "NORMAL_CLOSURE": 1000,
            "GOING_AWAY": 1001,
            "PROTOCOL_ERROR": 1002,
            "UNSUPPORTED_DATA": 1003,
            "NO_STATUS_RCVD": 1005,
            "ABNORMAL_CLOSURE": 1006,
            "INVALID_DATA": 1007,
            "POLICY_VIOLATION": 1008,
            "MESSAGE_TOO_BIG": 1009,
            "MANDATORY_EXTENSION": 1010,
            "INTERNAL_ERROR": 1011,
            "SERVICE_RESTART": 1012,
            "TRY_AGAIN_LATER": 1013,
            "BAD_GATEWAY": 1014,
            "TLS_HANDSHAKE": 1015,
        }

    def test_external_close_codes(self) -> None:
        registered = {1000, 1001, 1002, 1003, *range(1007, 1015)}
        assert EXTERNAL_CLOSE_CODES == frozenset(registered | set(range(3000, 5000)))
        for code in (1004, 1005, 1006, 1015):
            assert code not in EXTERNAL_CLOSE_CODES


class TestEncodeFrame:
    """5.2 Base Framing Protocol: header layout and payload length classes."""

    @pytest.mark.parametrize("length", LENGTHS)
    def test_header_layout(self, length: int) -> None:
        payload = os.urandom(length)
        frame = encode_frame(Opcode.BINARY, payload)
        assert frame[0] == 0x82  # FIN + binary
        if length < 126:
            assert frame[1] == length
            header = 2
        elif length < 65536:
            assert frame[1] == 126
            assert int.from_bytes(frame[2:4], "big") == length
            header = 4
        else:
            assert frame[1] == 127
            assert int.from_bytes(frame[2:10], "big") == length
            header = 10
        assert frame[header:] == payload

    @pytest.mark.parametrize("length", LENGTHS)
    def test_masked_header_layout(self, length: int) -> None:
        payload = os.urandom(length)
        frame = encode_frame(Opcode.TEXT, payload, mask=MASK)
        assert frame[1] & 0x80
        header = 2 if length < 126 else 4 if length < 65536 else 10
        assert frame[header : header + 4] == MASK
        assert frame[header + 4 :] == reference_mask(payload, MASK)

    @pytest.mark.parametrize("length", LENGTHS)
    @pytest.mark.parametrize("client", [False, True], ids=["masked", "unmasked"])
    def test_round_trip_through_protocol(self, length: int, client: bool) -> None:
        # A server parses masked frames, a client unmasked ones.
        payload = os.urandom(length)
        text = "é" * (length // 2)
        mask = None if client else MASK
        data = encode_frame(Opcode.BINARY, payload, mask=mask)
        data += encode_frame(Opcode.TEXT, text.encode(), mask=mask)
        events = Protocol(client=client, max_message_size=None).receive_data(data)
        assert events == [Message(payload), Message(text)]

    @pytest.mark.parametrize("length", LENGTHS)
    @pytest.mark.parametrize("mask", [None, MASK], ids=["unmasked", "masked"])
    def test_round_trip_through_websockets(self, length: int, mask: bytes | None) -> None:
        # An independent parser agrees with ours.
        ws_frames = pytest.importorskip("websockets.frames")
        ws_streams = pytest.importorskip("websockets.streams")
        payload = os.urandom(length)
        reader = ws_streams.StreamReader()
        reader.feed_data(encode_frame(Opcode.BINARY, payload, fin=False, mask=mask))
        parser = ws_frames.Frame.parse(reader.read_exact, mask=mask is not None)
        with pytest.raises(StopIteration) as done:
            next(parser)
        frame = done.value.value
        assert (frame.opcode, frame.fin, bytes(frame.data)) == (
            ws_frames.Opcode.BINARY,
            False,
            payload,
        )

    def test_flags(self) -> None:
        assert encode_frame(Opcode.TEXT, b"a", fin=False)[0] == 0x01
        assert encode_frame(Opcode.CONT, b"a")[0] == 0x80
        assert encode_frame(Opcode.TEXT, b"a", rsv1=True)[0] == 0xC1
        assert encode_frame(Opcode.PING) == b"\x89\x00"
        assert encode_frame(Opcode.PONG, b"hi") == b"\x8a\x02hi"

    @pytest.mark.parametrize("payload", [bytearray(b"abc"), memoryview(b"xabcx")[1:4]])
    def test_bytes_like_payloads(self, payload: bytearray | memoryview) -> None:
        assert encode_frame(Opcode.BINARY, payload) == b"\x82\x03abc"
        assert encode_frame(Opcode.BINARY, payload, mask=MASK) == encode_frame(
            Opcode.BINARY, b"abc", mask=MASK
        )

    def test_control_frames_must_be_final_and_short(self) -> None:
        """5.5 Control Frames: at most 125 bytes, never fragmented."""
        encode_frame(Opcode.PING, b"x" * 125)
        with pytest.raises(ValueError):
            encode_frame(Opcode.PING, b"x" * 126)
        with pytest.raises(ValueError):
            encode_frame(Opcode.CLOSE, b"", fin=False)

    def test_mask_must_be_four_bytes(self) -> None:
        with pytest.raises(ValueError):
            encode_frame(Opcode.TEXT, b"abc", mask=b"abc")


class TestMasking:
    """5.3 Client-to-Server Masking."""

    @pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
    @pytest.mark.parametrize(
        "length",
        # Around the C loop's 8- and 32-byte steps and the fallback's switch to translate.
        [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 39, 40, 41, 1000, 32767, 32768, 32769, 65536],
    )
    def test_matches_rfc(self, implementation: MaskFunction, length: int) -> None:
        data = os.urandom(length)
        assert implementation(data, MASK) == reference_mask(data, MASK)

    @pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
    @QUICK
    @given(data=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
    def test_involution(self, implementation: MaskFunction, data: bytes, mask: bytes) -> None:
        masked = implementation(data, mask)
        assert isinstance(masked, bytes)
        assert len(masked) == len(data)
        assert implementation(masked, mask) == data

    @pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
    def test_bytes_like_input(self, implementation: MaskFunction) -> None:
        data = os.urandom(37)
        expected = reference_mask(data[3:30], MASK)
        assert implementation(memoryview(data)[3:30], MASK) == expected
        masked = implementation(bytearray(data[3:30]), MASK)
        assert type(masked) is bytes
        assert masked == expected

    @pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
    def test_views_are_read_as_their_bytes(self, implementation: MaskFunction) -> None:
        # A strided view is flattened; a view of wider items is masked octet by octet.
        data = os.urandom(40)
        assert implementation(memoryview(data)[::2], MASK) == reference_mask(data[::2], MASK)
        words = array.array("I", range(1000, 1010))
        assert implementation(memoryview(words), MASK) == reference_mask(words.tobytes(), MASK)

    @pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
    @pytest.mark.parametrize("mask", [b"", b"abc", b"abcde"])
    def test_mask_length(self, implementation: MaskFunction, mask: bytes) -> None:
        with pytest.raises(ValueError):
            implementation(b"data", mask)

    @pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
    def test_text_is_not_bytes(self, implementation: MaskFunction) -> None:
        with pytest.raises(TypeError):
            implementation("data", MASK)  # type: ignore[arg-type]

    @NEEDS_C
    @QUICK
    @given(
        data=st.binary(max_size=3000),
        start=st.integers(0, 15),
        step=st.integers(1, 3),
        mask=st.binary(min_size=4, max_size=4),
    )
    def test_c_matches_python(self, data: bytes, start: int, step: int, mask: bytes) -> None:
        # Any start in a buffer: the C loop reads words at every alignment.
        view = memoryview(bytearray(data))[start::step]
        assert frames._apply_mask_c is not None
        masked = frames._apply_mask_c(view, mask)
        assert masked == frames._apply_mask_python(view, mask)
        assert masked == reference_mask(bytes(view), mask)

    @NEEDS_C
    @pytest.mark.parametrize("length", [4095, 4096, 4097, 32768, 65536 + 5, 1 << 20])
    @pytest.mark.parametrize("start", range(8))
    def test_c_matches_python_on_large_payloads(self, length: int, start: int) -> None:
        view = memoryview(os.urandom(length + 8))[start : start + length]
        assert frames._apply_mask_c is not None
        assert frames._apply_mask_c(view, MASK) == frames._apply_mask_python(view, MASK)

    def test_c_extension_in_use(self) -> None:
        # setup.py builds geo_ws.protocol._mask on every install with a C compiler (pip
        # install ., or -e), and the parser and every encode_frame use it.
        assert frames.MASK_IMPLEMENTATION == "c", "build it: pip install -e ."
        assert apply_mask.__module__ == "geo_ws.protocol._mask"
        assert machine.apply_mask is apply_mask

    def test_python_fallback_without_the_c_extension(self) -> None:
        # As after an install where the extension could not be compiled.
        code = (
            "import sys\n"
            "sys.modules['geo_ws.protocol._mask'] = None  # makes it unimportable\n"
            "from geo_ws.protocol import frames, machine\n"
            "assert frames.MASK_IMPLEMENTATION == 'python', frames.MASK_IMPLEMENTATION\n"
            "assert frames.apply_mask is frames._apply_mask_python\n"
            "assert machine.apply_mask is frames._apply_mask_python\n"
            "assert frames.apply_mask(frames.apply_mask(b'hello', b'abcd'), b'abcd') == b'hello'\n"
        )
        result = run_python("-c", code)
        assert result.returncode == 0, result.stderr


class TestClosePayload:
    """5.5.1 Close and 7.4 Status Codes."""

    def test_no_code(self) -> None:
        assert encode_close() == b""
        assert encode_close(None) == b""
        assert parse_close(b"") == (1005, "")

    def test_reason_requires_code(self) -> None:
        with pytest.raises(ValueError):
            encode_close(None, "bye")

    @pytest.mark.parametrize("code", [-1, 65536])
    def test_code_must_fit_16_bits(self, code: int) -> None:
        with pytest.raises(ValueError):
            encode_close(code)

    def test_encoding(self) -> None:
        assert encode_close(1000) == b"\x03\xe8"
        assert encode_close(CloseCode.GOING_AWAY, "bye") == b"\x03\xe9bye"
        assert encode_close(4000, "é") == b"\x0f\xa0\xc3\xa9"

    def test_encodes_any_code_for_tests(self) -> None:
        # Crafting invalid frames is allowed here; Protocol.send_close enforces valid codes.
        assert encode_close(1005) == b"\x03\xed"
        assert encode_close(999) == b"\x03\xe7"

    @pytest.mark.parametrize(
        "code", [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
    )
    def test_valid_codes_round_trip(self, code: int) -> None:
        assert parse_close(encode_close(code, "reason")) == (code, "reason")

    @pytest.mark.parametrize(
        "code",
        [
            0,
            999,  # below 1000
            1004,  # reserved
            1005,  # NO_STATUS_RCVD: local use only
            1006,  # ABNORMAL_CLOSURE: local use only
            1015,  # TLS_HANDSHAKE: local use only
            1016,
            2000,
            2999,  # 1016-2999: reserved for future RFCs
            5000,
            65535,  # >= 5000: undefined
        ],
    )
    def test_invalid_codes(self, code: int) -> None:
        with pytest.raises(ProtocolError) as failure:
            parse_close(code.to_bytes(2, "big"))
        assert failure.value.code == 1002
        assert type(failure.value) is ProtocolError

    def test_one_byte_payload(self) -> None:
        with pytest.raises(ProtocolError) as failure:
            parse_close(b"\x03")
        assert failure.value.code == 1002

    @pytest.mark.parametrize("reason", [b"\xff", b"\xc3", b"ok\xed\xa0\x80", b"\xc0\xaf"])
    def test_invalid_utf8_reason(self, reason: bytes) -> None:
        with pytest.raises(InvalidUTF8) as failure:
            parse_close(b"\x03\xe8" + reason)
        assert failure.value.code == 1007

    @pytest.mark.parametrize(
        ("reason", "kept"),
        [
            ("a" * 200, "a" * 123),
            ("a" * 123, "a" * 123),
            ("é" * 100, "é" * 61),  # 2-byte characters: 122 bytes, not 123
            ("€" * 50, "€" * 41),  # 3-byte characters: exactly 123 bytes
            ("a" + "😀" * 40, "a" + "😀" * 30),  # 4-byte characters: 121 bytes
            ("ab" + "😀" * 40, "ab" + "😀" * 30),  # 122 bytes
        ],
    )
    def test_reason_truncated_on_character_boundary(self, reason: str, kept: str) -> None:
        payload = encode_close(1000, reason)
        assert len(payload) <= 125
        assert parse_close(payload) == (1000, kept)

    @QUICK
    @given(reason=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
    def test_any_reason_fits_and_is_a_prefix(self, reason: str) -> None:
        payload = encode_close(1001, reason)
        assert len(payload) <= 125
        code, parsed = parse_close(payload)
        assert code == 1001
        assert reason.startswith(parsed)
        # Only what does not fit is dropped.
        assert len(parsed.encode()) > 119 or parsed == reason


def test_ping_frame_parses() -> None:
    """5.5.2 Ping: a frame built here is read back by the protocol."""
    events = Protocol().receive_data(encode_frame(Opcode.PING, b"hello", mask=MASK))
    assert events == [Ping(b"hello")]
