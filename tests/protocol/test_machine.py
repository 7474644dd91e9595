"""Tests for geo_ws.protocol.machine: the sans-I/O protocol, by RFC 6455 section. No sockets."""

from __future__ import annotations

import gc
import itertools
import os
import sys
import types
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_ws.exceptions import InvalidState, ProtocolError
from geo_ws.protocol.deflate import PerMessageDeflate
from geo_ws.protocol.frames import Opcode, encode_close, encode_frame, parse_close
from geo_ws.protocol.machine import (
    CLOSED,
    CLOSING,
    OPEN,
    Close,
    Event,
    Failure,
    Message,
    Ping,
    Pong,
    Protocol,
    State,
)
from geo_ws.protocol.outgoing import Outgoing

from ..helpers import MASK, QUICK
from ..live_apps.process import run_python

#: Byte by byte is slow: fewer examples.
QUICK_BYTEWISE = settings(QUICK, max_examples=30)

# --- helpers ------------------------------------------------------------------------------------


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = MASK
) -> bytes:
    """Build a frame as a client sends it: masked (unless ``mask`` is None)."""
    return encode_frame(opcode, payload, fin=fin, mask=mask)


def with_first_byte(first: int, payload: bytes = b"", *, mask: bytes | None = MASK) -> bytes:
    """Build a frame with any first header byte: FIN, RSV1-3 and opcode, even reserved ones."""
    return bytes([first]) + frame(Opcode.BINARY, payload, mask=mask)[1:]


def text(data: str, *, fin: bool = True) -> bytes:
    return frame(Opcode.TEXT, data.encode(), fin=fin)


def fragments(opcode: int, pieces: list[bytes]) -> list[bytes]:
    """Split a message into frames: ``opcode`` first, then continuations, FIN on the last."""
    last = len(pieces) - 1
    return [
        frame(opcode if i == 0 else Opcode.CONT, piece, fin=i == last)
        for i, piece in enumerate(pieces)
    ]


def receive(data: bytes, **kwargs: object) -> list[Event]:
    """Feed ``data`` in one chunk to a new server-side protocol."""
    return Protocol(**kwargs).receive_data(data)  # type: ignore[arg-type]


def receive_in_chunks(data: bytes, cuts: list[int], **kwargs: object) -> list[Event]:
    """Feed ``data`` cut at the offsets ``cuts`` to a new server-side protocol."""
    protocol = Protocol(**kwargs)  # type: ignore[arg-type]
    events: list[Event] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        events += protocol.receive_data(data[start:end])
    return events


def receive_bytewise(data: bytes, **kwargs: object) -> list[Event]:
    """Feed ``data`` one byte at a time to a new server-side protocol."""
    return receive_in_chunks(data, list(range(1, len(data))), **kwargs)


def assert_failure(events: list[Event], code: int, reason: str | None = None) -> None:
    """Assert that the connection is failed (RFC 6455 section 7.1.7) with ``code``."""
    assert events, "no events"
    failure = events[-1]
    assert isinstance(failure, Failure), events
    assert failure.code == code, failure
    if reason is not None:
        assert failure.reason == reason
    assert len(failure.reason.encode()) < 123
    assert not any(isinstance(event, Failure) for event in events[:-1])


# --- RFC 6455 -----------------------------------------------------------------------------------


class TestSansIO:
    """The protocol layer does no I/O, so it imports no I/O library."""

    def test_no_io_imports(self) -> None:
        code = (
            "import sys, geo_ws.protocol.machine, geo_ws.protocol.frames\n"
            "banned = ('gevent', 'socket', '_socket', 'flask', 'werkzeug', 'selectors')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
        )
        result = run_python("-c", code)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"


class TestMasking:
    """5.1 Overview and 5.3 Client-to-Server Masking."""

    def test_server_accepts_masked_frames(self) -> None:
        assert receive(text("hi")) == [Message("hi")]

    def test_server_rejects_unmasked_frames(self) -> None:
        events = receive(frame(Opcode.TEXT, b"hi", mask=None))
        assert_failure(events, 1002, "unmasked frame from client")

    def test_client_accepts_unmasked_frames(self) -> None:
        data = frame(Opcode.TEXT, b"hi", mask=None) + frame(Opcode.PING, b"p", mask=None)
        assert Protocol(client=True).receive_data(data) == [Message("hi"), Ping(b"p")]

    def test_client_rejects_masked_frames(self) -> None:
        events = Protocol(client=True).receive_data(text("hi"))
        assert_failure(events, 1002, "masked frame from server")

    def test_every_mask_works(self) -> None:
        # Including a zero mask and one that rotates across chunk boundaries.
        for mask in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", os.urandom(4)):
            data = frame(Opcode.BINARY, bytes(range(256)) * 3, mask=mask)
            assert receive_in_chunks(data, [3, 7, 100, 101, 102, 500]) == [
                Message(bytes(range(256)) * 3)
            ]


class TestBaseFraming:
    """5.2 Base Framing Protocol."""

    @pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
    def test_length_classes(self, length: int) -> None:
        payload = os.urandom(length)
        string = "x" * length
        data = frame(Opcode.BINARY, payload) + text(string)
        assert receive(data, max_message_size=None) == [Message(payload), Message(string)]

    def test_several_frames_in_one_chunk(self) -> None:
        data = text("a") + frame(Opcode.BINARY, b"b") + text("") + frame(Opcode.BINARY, b"")
        assert receive(data) == [Message("a"), Message(b"b"), Message(""), Message(b"")]

    def test_incomplete_frame_gives_no_event(self) -> None:
        protocol = Protocol()
        data = text("hello")
        assert protocol.receive_data(data[:-1]) == []
        assert protocol.receive_data(data[-1:]) == [Message("hello")]

    def test_empty_input(self) -> None:
        protocol = Protocol()
        assert protocol.receive_data(b"") == []
        assert protocol.receive_data(text("a")[:3]) == []
        assert protocol.receive_data(b"") == []
        assert protocol.receive_data(text("a")[3:]) == [Message("a")]

    def test_bytes_like_input(self) -> None:
        data = text("a") + text("b")
        protocol = Protocol()
        assert protocol.receive_data(bytearray(data[:4])) == []  # type: ignore[arg-type]
        assert protocol.receive_data(memoryview(data)[4:]) == [  # type: ignore[arg-type]
            Message("a"),
            Message("b"),
        ]

    @pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
    def test_reserved_bits(self, rsv: int) -> None:
        events = receive(text("ok") + with_first_byte(0x82 | rsv, b"x") + text("lost"))
        assert events[:1] == [Message("ok")]
        assert_failure(events, 1002, "reserved bits set")

    @pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
    def test_reserved_opcodes(self, opcode: int) -> None:
        events = receive(with_first_byte(0x80 | opcode, b"x"))
        assert_failure(events, 1002, f"reserved opcode 0x{opcode:X}")

    def test_64_bit_length_with_most_significant_bit(self) -> None:
        header = bytes([0x82, 0x80 | 127]) + (1 << 63 | 5).to_bytes(8, "big") + MASK
        assert_failure(receive(header, max_message_size=None), 1002)

    def test_garbage_after_valid_frames(self) -> None:
        events = receive(text("one") + text("two") + b"\xff\xff\xff\xff")
        assert events[:2] == [Message("one"), Message("two")]
        assert_failure(events, 1002)


class TestStreamSplitting:
    """5.2: frames are a byte stream; any split must give the same events as no split."""

    STREAM = b"".join(
        [
            text("héllo wörld"),
            frame(Opcode.PING, b"ping"),
            *fragments(Opcode.TEXT, [b"\xe2\x82", b"\xac and ", b"\xf0\x9f\x98", b"\x80"]),
            frame(Opcode.BINARY, bytes(range(200))),
            fragments(Opcode.BINARY, [b"ab", b""])[0],
            frame(Opcode.PONG, b""),
            fragments(Opcode.BINARY, [b"ab", b""])[1],
            frame(Opcode.TEXT, ("x" * 300).encode()),
            frame(Opcode.CLOSE, encode_close(1000, "bye")),
        ]
    )
    EXPECTED = [
        Message("héllo wörld"),
        Ping(b"ping"),
        Message("€ and 😀"),
        Message(bytes(range(200))),
        Pong(b""),
        Message(b"ab"),
        Message("x" * 300),
        Close(1000, "bye"),
    ]

    def test_all_at_once(self) -> None:
        assert receive(self.STREAM) == self.EXPECTED

    def test_one_byte_at_a_time(self) -> None:
        assert receive_bytewise(self.STREAM) == self.EXPECTED

    def test_every_single_cut(self) -> None:
        for cut in range(1, len(self.STREAM)):
            assert receive_in_chunks(self.STREAM, [cut]) == self.EXPECTED, cut

    @QUICK
    @given(st.data())
    def test_random_cuts(self, data: st.DataObject) -> None:
        cuts = data.draw(st.lists(st.integers(0, len(self.STREAM)), max_size=30))
        assert receive_in_chunks(self.STREAM, cuts) == self.EXPECTED


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """Valid client streams: messages in random fragments, control frames between them."""
    masks = st.binary(min_size=4, max_size=4)
    chunks: list[bytes] = []
    expected: list[Event] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
        if kind in ("ping", "pong"):
            payload = draw(st.binary(max_size=125))
            opcode = Opcode.PING if kind == "ping" else Opcode.PONG
            chunks.append(frame(opcode, payload, mask=draw(masks)))
            expected.append(Ping(payload) if kind == "ping" else Pong(payload))
            continue
        message: str | bytes
        if kind == "text":
            message = draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
            raw = message.encode()
        else:
            message = raw = draw(st.binary(max_size=300))
        # Cut anywhere, in the middle of a code point too.
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
        bounds = [0, *cuts, len(raw)]
        pieces = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        for i, piece in enumerate(pieces):
            first = i == 0
            last = i == len(pieces) - 1
            opcode = (Opcode.TEXT if kind == "text" else Opcode.BINARY) if first else Opcode.CONT
            chunks.append(frame(opcode, piece, fin=last, mask=draw(masks)))
            if not last and draw(st.booleans()):
                # Control frames may come between fragments (5.4).
                chunks.append(frame(Opcode.PING, b"between", mask=draw(masks)))
                expected.append(Ping(b"between"))
        expected.append(Message(message))
    if draw(st.booleans()):
        reason = draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
        chunks.append(frame(Opcode.CLOSE, encode_close(1000, reason), mask=draw(masks)))
        expected.append(Close(*parse_close(encode_close(1000, reason))))
        chunks.append(text("ignored after close"))
    return b"".join(chunks), expected


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Byte streams that are partly valid: random headers, payloads and raw bytes."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            parts.append(draw(st.binary(max_size=40)))
        elif choice == 1:
            first = draw(st.integers(0, 255))
            payload = draw(st.binary(max_size=140))
            parts.append(with_first_byte(first, payload, mask=draw(st.sampled_from([MASK, None]))))
        elif choice == 2:
            opcode = draw(st.sampled_from(list(Opcode)))
            payload = draw(st.binary(max_size=130))
            fin = draw(st.booleans())
            parts.append(bytes([(0x80 if fin else 0) | opcode]) + frame(Opcode.BINARY, payload)[1:])
        else:
            parts.append(draw(streams())[0])
    return b"".join(parts)


class TestArbitraryInput:
    """5.2 and 7.1.7: any stream, split anyhow, gives the same events and never raises."""

    @QUICK
    @given(streams(), st.data())
    def test_valid_streams_any_split(
        self, stream: tuple[bytes, list[Event]], data: st.DataObject
    ) -> None:
        raw, expected = stream
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
        assert receive(raw) == expected
        assert receive_in_chunks(raw, cuts) == expected

    @QUICK_BYTEWISE
    @given(streams())
    def test_valid_streams_bytewise(self, stream: tuple[bytes, list[Event]]) -> None:
        raw, expected = stream
        assert receive_bytewise(raw) == expected

    @QUICK
    @given(garbage(), st.data(), st.booleans(), st.sampled_from([None, 0, 10, 200]))
    def test_garbage_never_raises(
        self, raw: bytes, data: st.DataObject, client: bool, limit: int | None
    ) -> None:
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
        kwargs = {"client": client, "max_message_size": limit}
        events = receive(raw, **kwargs)
        assert receive_in_chunks(raw, cuts, **kwargs) == events
        failures = [event for event in events if isinstance(event, Failure)]
        assert failures in ([], events[-1:])
        for failure in failures:
            assert failure.code in (1002, 1007, 1009), failure  # never 1011: no bug
            assert len(failure.reason.encode()) < 123
        closes = [event for event in events if isinstance(event, Close)]
        assert closes in ([], events[-1:])


def websockets_events(raw: bytes, cuts: list[int]) -> list[Event]:
    """What python-websockets' sans-I/O parser makes of a client stream, as our events."""
    from websockets.frames import Opcode as WsOpcode
    from websockets.protocol import Protocol as WsProtocol
    from websockets.protocol import Side, State

    parser = WsProtocol(Side.SERVER, state=State.OPEN, max_size=None)
    for start, end in itertools.pairwise([0, *sorted(cuts), len(raw)]):
        parser.receive_data(raw[start:end])
    events: list[Event] = []
    parts: list[bytes] = []
    for ws_frame in parser.events_received():
        opcode = ws_frame.opcode
        if opcode in (WsOpcode.TEXT, WsOpcode.BINARY, WsOpcode.CONT):
            if opcode != WsOpcode.CONT:
                kind, parts = opcode, []
            parts.append(ws_frame.data)
            if ws_frame.fin:
                data = b"".join(parts)
                events.append(Message(data.decode() if kind == WsOpcode.TEXT else data))
        elif opcode == WsOpcode.PING:
            events.append(Ping(ws_frame.data))
        elif opcode == WsOpcode.PONG:
            events.append(Pong(ws_frame.data))
        else:
            events.append(Close(*parse_close(ws_frame.data)))
    return events


class TestDifferential:
    """The same valid streams, split anyhow, parse alike in geo_ws and python-websockets."""

    @QUICK
    @given(streams(), st.data())
    def test_same_messages_as_python_websockets(
        self, stream: tuple[bytes, list[Event]], data: st.DataObject
    ) -> None:
        raw, _ = stream
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
        assert receive_in_chunks(raw, cuts) == websockets_events(raw, cuts)


class TestMemoryBounds:
    """Whatever arrives, the parser holds at most a frame header plus a control frame, and
    never more of a message than max_message_size."""

    @QUICK
    @given(garbage(), st.data(), st.sampled_from([0, 10, 200]))
    def test_buffers_stay_within_the_limits(
        self, raw: bytes, data: st.DataObject, limit: int
    ) -> None:
        protocol = Protocol(max_message_size=limit)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
        for start, end in itertools.pairwise([0, *cuts, len(raw)]):
            protocol.receive_data(raw[start:end])
            assert len(protocol._rest) <= 14 + 125
            held = sum(
                len(part.encode() if isinstance(part, str) else part)
                for part in [*protocol._parts, *protocol._pieces]
            )
            assert held <= limit

    @pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY], ids=["text", "binary"])
    def test_a_message_in_tiny_fragments_costs_little_more_than_its_bytes(
        self, opcode: Opcode
    ) -> None:
        protocol = Protocol()  # max_message_size: 1 MiB
        burst = frame(Opcode.CONT, b"xy", fin=False) * 2**15  # 64 KiB of message
        protocol.receive_data(frame(opcode, b"", fin=False))
        for _ in range(15):  # all but the last 64 KiB, and no end
            assert protocol.receive_data(burst) == []
        # Before: an object per fragment, 20-30 MB (a million fragments: 36 MB).
        assert deep_size(protocol) < 4 * 2**20


def deep_size(root: object) -> int:
    """The bytes of ``root`` and of every object it holds, classes and modules aside."""
    seen: set[int] = set()
    todo, total = [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        todo += gc.get_referents(obj)
    return total


class TestFragmentation:
    """5.4 Fragmentation."""

    def test_text_message(self) -> None:
        data = b"".join(fragments(Opcode.TEXT, [b"Hel", b"lo ", b"", b"world"]))
        assert receive(data) == [Message("Hello world")]

    def test_binary_message(self) -> None:
        data = b"".join(fragments(Opcode.BINARY, [b"\x00\x01", b"\x02", b"\x03"]))
        assert receive(data) == [Message(b"\x00\x01\x02\x03")]

    def test_empty_fragments(self) -> None:
        assert receive(b"".join(fragments(Opcode.TEXT, [b"", b""]))) == [Message("")]
        assert receive(b"".join(fragments(Opcode.BINARY, [b"", b""]))) == [Message(b"")]

    def test_code_point_split_across_fragments(self) -> None:
        data = b"".join(fragments(Opcode.TEXT, [b"\xf0", b"\x9f\x98", b"\x80"]))
        assert receive(data) == [Message("😀")]

    def test_control_frames_between_fragments(self) -> None:
        first, middle, last = fragments(Opcode.TEXT, [b"a", b"b", b"c"])
        data = first + frame(Opcode.PING, b"1") + middle + frame(Opcode.PONG, b"2") + last
        assert receive(data) == [Ping(b"1"), Pong(b"2"), Message("abc")]
        assert receive_bytewise(data) == [Ping(b"1"), Pong(b"2"), Message("abc")]

    def test_close_between_fragments(self) -> None:
        first, last = fragments(Opcode.BINARY, [b"a", b"b"])
        events = receive(first + frame(Opcode.CLOSE, encode_close(1001)) + last)
        assert events == [Close(1001, "")]

    def test_messages_after_a_fragmented_message(self) -> None:
        data = b"".join(fragments(Opcode.BINARY, [b"a", b"b"])) + text("next")
        assert receive(data) == [Message(b"ab"), Message("next")]

    def test_continuation_without_a_message(self) -> None:
        events = receive(text("ok") + frame(Opcode.CONT, b"x"))
        assert events[:1] == [Message("ok")]
        assert_failure(events, 1002, "continuation frame without a message to continue")

    @pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
    def test_new_message_during_a_fragmented_message(self, opcode: Opcode) -> None:
        first = fragments(Opcode.TEXT, [b"a", b"b"])[0]
        events = receive(first + frame(opcode, b"x"))
        assert_failure(events, 1002, "new data frame before the fragmented message ended")

    def test_many_small_fragments(self) -> None:
        payload = os.urandom(64 * 1000)
        pieces = [payload[i : i + 64] for i in range(0, len(payload), 64)]
        assert receive(b"".join(fragments(Opcode.BINARY, pieces))) == [Message(payload)]


class TestControlFrames:
    """5.5 Control Frames, 5.5.2 Ping and 5.5.3 Pong."""

    def test_ping(self) -> None:
        assert receive(frame(Opcode.PING, b"are you there")) == [Ping(b"are you there")]

    def test_pong(self) -> None:
        assert receive(frame(Opcode.PONG, b"yes")) == [Pong(b"yes")]

    def test_empty_and_largest_payloads(self) -> None:
        data = frame(Opcode.PING) + frame(Opcode.PONG, b"x" * 125)
        assert receive(data) == [Ping(b""), Pong(b"x" * 125)]

    def test_not_subject_to_message_limit(self) -> None:
        assert receive(frame(Opcode.PING, b"x" * 125), max_message_size=10) == [Ping(b"x" * 125)]

    @pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
    def test_fragmented_control_frame(self, opcode: Opcode) -> None:
        events = receive(with_first_byte(opcode, b""))
        assert_failure(events, 1002, "fragmented control frame")

    @pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
    def test_payload_over_125_bytes(self, opcode: Opcode) -> None:
        # encode_frame refuses to build it, so patch a binary frame's opcode.
        events = receive(with_first_byte(0x80 | opcode, b"x" * 126))
        assert_failure(events, 1002, "control frame payload over 125 bytes")


SIDES = pytest.mark.parametrize("client", [False, True], ids=["server", "client"])


@SIDES
class TestSending:
    """5.1 and 5.3: what either side sends; the peer's protocol reads it back."""

    def test_every_kind_of_frame_reaches_the_peer(self, client: bool) -> None:
        protocol, peer = Protocol(client=client), Protocol(client=not client)
        wire = b"".join(
            (
                protocol.send_text("héllo"),
                protocol.send_binary(bytearray(b"\x00\xff")),
                protocol.send_data(Outgoing("shared")),
                protocol.send_data(Outgoing(b"x" * 70000)),
                protocol.send_ping(b"p"),
                protocol.send_pong(memoryview(b"q")),
                protocol.send_close(1000, "bye"),
            )
        )
        assert peer.receive_data(wire) == [
            Message("héllo"),
            Message(b"\x00\xff"),
            Message("shared"),
            Message(b"x" * 70000),
            Ping(b"p"),
            Pong(b"q"),
            Close(1000, "bye"),
        ]

    def test_a_client_masks_each_frame_with_a_fresh_key_a_server_never(self, client: bool) -> None:
        protocol = Protocol(client=client)
        frames = [protocol.send_text("same") for _ in range(3)] + [protocol.send_ping(b"same")]
        assert all(bool(data[1] & 0x80) is client for data in frames)
        if client:
            assert len({data[2:6] for data in frames}) == 4
            assert len(set(frames[:3])) == 3
        else:
            assert frames[0] == frames[1] == encode_frame(Opcode.TEXT, b"same")

    def test_a_prepared_message_is_shared_by_servers_and_masked_by_clients(
        self, client: bool
    ) -> None:
        message = Outgoing("broadcast")
        first, second = Protocol(client=client), Protocol(client=client)
        if client:
            assert first.send_data(message) != second.send_data(message)
        else:
            assert first.send_data(message) is second.send_data(message) is message.frame

    @pytest.mark.parametrize(
        "send",
        [
            lambda p: p.send_text("late"),
            lambda p: p.send_binary(b"late"),
            lambda p: p.send_data(Outgoing("late")),
            lambda p: p.send_ping(b""),
            lambda p: p.send_pong(b""),
        ],
        ids=["text", "binary", "data", "ping", "pong"],
    )
    def test_nothing_follows_our_close(self, client: bool, send: object) -> None:
        protocol = Protocol(client=client)
        protocol.send_close(1000)
        with pytest.raises(InvalidState, match="Close frame was already sent"):
            send(protocol)  # type: ignore[operator]
        eof = Protocol(client=client)
        eof.receive_eof()
        with pytest.raises(InvalidState, match="closed"):
            send(eof)  # type: ignore[operator]

    def test_data_may_still_go_between_the_peers_close_and_ours(self, client: bool) -> None:
        protocol, peer = Protocol(client=client), Protocol(client=not client)
        assert protocol.receive_data(peer.send_close(1001)) == [Close(1001, "")]
        wire = protocol.send_text("last words") + protocol.send_close(1001)
        assert peer.receive_data(wire) == [Message("last words"), Close(1001, "")]
        assert protocol.state is CLOSED is peer.state

    def test_control_payloads_are_limited_to_125_bytes(self, client: bool) -> None:
        protocol = Protocol(client=client)
        assert len(protocol.send_ping(b"x" * 125)) == 2 + 125 + (4 if client else 0)
        for send in (protocol.send_ping, protocol.send_pong):
            with pytest.raises(ValueError, match="125 bytes"):
                send(b"x" * 126)

    def test_send_close_checks_codes_on_both_sides(self, client: bool) -> None:
        protocol = Protocol(client=client)
        with pytest.raises(ValueError, match="1006 may not be sent"):
            protocol.send_close(1006)
        assert protocol.state is OPEN and not protocol.close_sent


def test_a_server_compresses_what_it_sends_once_deflate_is_negotiated() -> None:
    deflate = TestPerMessageDeflate.deflate(min_size=10)
    protocol = Protocol(deflate=deflate)
    assert protocol.send_text("short")[0] == 0x81
    data = protocol.send_binary(b"z" * 1000)
    assert data[0] == 0xC2 and len(data) < 100  # FIN + RSV1 + binary


class TestClosingHandshake:
    """5.5.1 Close, 7.1.2-7.1.4 the closing handshake, 7.4 status codes."""

    def test_initial_state(self) -> None:
        protocol = Protocol()
        assert protocol.state is OPEN is State.OPEN
        assert (protocol.close_sent, protocol.close_received) == (False, False)
        assert (CLOSING, CLOSED) == (State.CLOSING, State.CLOSED)

    def test_peer_closes_first(self) -> None:
        protocol = Protocol()
        events = protocol.receive_data(frame(Opcode.CLOSE, encode_close(1000, "bye")))
        assert events == [Close(1000, "bye")]
        assert protocol.state is CLOSING
        assert (protocol.close_sent, protocol.close_received) == (False, True)
        # The protocol does not answer by itself; the connection layer does.
        assert protocol.send_close(1000) == b"\x88\x02\x03\xe8"
        assert protocol.state is CLOSED
        assert (protocol.close_sent, protocol.close_received) == (True, True)

    def test_we_close_first(self) -> None:
        protocol = Protocol()
        assert protocol.send_close(1001, "going") == encode_frame(
            Opcode.CLOSE, encode_close(1001, "going")
        )
        assert protocol.state is CLOSING
        assert (protocol.close_sent, protocol.close_received) == (True, False)
        # The peer may still send data before it sees our Close.
        events = protocol.receive_data(text("late") + frame(Opcode.CLOSE, encode_close(1001)))
        assert events == [Message("late"), Close(1001, "")]
        assert protocol.state is CLOSED
        assert protocol.close_received

    def test_close_without_code(self) -> None:
        assert receive(frame(Opcode.CLOSE)) == [Close(1005, "")]

    def test_data_after_close_is_ignored(self) -> None:
        protocol = Protocol()
        events = protocol.receive_data(frame(Opcode.CLOSE) + text("ignored") + b"\xff\xff")
        assert events == [Close(1005, "")]
        assert protocol.receive_data(text("ignored")) == []
        assert protocol.receive_data(frame(Opcode.CLOSE)) == []

    def test_send_close_without_code(self) -> None:
        assert Protocol().send_close(None) == b"\x88\x00"

    def test_send_close_echoes_no_status(self) -> None:
        # Close(1005) means "no code": echoing it sends an empty payload, never 1005.
        protocol = Protocol()
        (close,) = protocol.receive_data(frame(Opcode.CLOSE))
        assert isinstance(close, Close)
        assert protocol.send_close(close.code, close.reason) == b"\x88\x00"

    @pytest.mark.parametrize("code", [999, 1004, 1006, 1015, 2000, 5000])
    def test_send_close_refuses_codes_peers_may_not_send(self, code: int) -> None:
        protocol = Protocol()
        with pytest.raises(ValueError):
            protocol.send_close(code)
        assert not protocol.close_sent
        assert protocol.state is OPEN

    def test_send_close_truncates_reason(self) -> None:
        data = Protocol().send_close(1000, "é" * 100)
        assert len(data) == 2 + 2 + 122
        assert Protocol(client=True).receive_data(data) == [Close(1000, "é" * 61)]

    def test_send_close_twice(self) -> None:
        protocol = Protocol()
        protocol.send_close()
        with pytest.raises(InvalidState):
            protocol.send_close()

    def test_send_close_after_eof(self) -> None:
        protocol = Protocol()
        protocol.receive_eof()
        with pytest.raises(InvalidState):
            protocol.send_close()

    def test_client_masks_its_close(self) -> None:
        data = Protocol(client=True).send_close(4000, "done")
        assert data[1] & 0x80
        # A server-side protocol reads it back.
        assert receive(data) == [Close(4000, "done")]

    def test_one_byte_payload(self) -> None:
        assert_failure(receive(frame(Opcode.CLOSE, b"\x03")), 1002)

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
    def test_invalid_code(self, code: int) -> None:
        events = receive(frame(Opcode.CLOSE, code.to_bytes(2, "big")))
        assert_failure(events, 1002, f"invalid close code {code}")

    @pytest.mark.parametrize("code", [1000, 1003, 1007, 1014, 3000, 4999])
    def test_valid_code(self, code: int) -> None:
        assert receive(frame(Opcode.CLOSE, encode_close(code, "r"))) == [Close(code, "r")]

    def test_invalid_utf8_reason(self) -> None:
        events = receive(frame(Opcode.CLOSE, b"\x03\xe8\xff"))
        assert_failure(events, 1007, "invalid UTF-8 in close reason")


class TestFailing:
    """7.1.7 Fail the WebSocket Connection."""

    def test_events_before_the_error_are_kept(self) -> None:
        events = receive(text("first") + frame(Opcode.PING, b"p") + frame(Opcode.TEXT, b"\xff"))
        assert events[:2] == [Message("first"), Ping(b"p")]
        assert_failure(events, 1007)

    def test_input_is_discarded_after_a_failure(self) -> None:
        protocol = Protocol()
        events = protocol.receive_data(text("ok") + frame(Opcode.CONT, b"x") + text("lost"))
        assert events[0] == Message("ok")
        assert_failure(events, 1002)
        assert protocol.state is CLOSING
        assert (protocol.close_sent, protocol.close_received) == (False, False)
        assert protocol.receive_data(text("lost")) == []
        assert protocol.receive_data(frame(Opcode.CLOSE)) == []
        assert protocol.close_received is False

    def test_connection_layer_sends_close_then_eof(self) -> None:
        protocol = Protocol()
        (failure,) = protocol.receive_data(frame(Opcode.BINARY, b"x", mask=None))
        assert isinstance(failure, Failure)
        data = protocol.send_close(failure.code, failure.reason)
        assert Protocol(client=True).receive_data(data) == [Close(1002, failure.reason)]
        assert protocol.state is CLOSING
        assert protocol.receive_eof() == [Close(1006, "")]
        assert protocol.state is CLOSED

    def test_failure_while_closing(self) -> None:
        protocol = Protocol()
        protocol.send_close()
        assert_failure(protocol.receive_data(frame(Opcode.TEXT, b"\xff")), 1007)
        assert protocol.state is CLOSING

    def test_error_is_kept_for_logs(self) -> None:
        assert Protocol().parser_exc is None
        protocol = Protocol()
        protocol.receive_data(with_first_byte(0x83))
        assert isinstance(protocol.parser_exc, ProtocolError)
        assert protocol.parser_exc.code == 1002

    def test_bug_becomes_internal_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def broken(self: Protocol) -> Message:
            raise RuntimeError("secret detail")

        monkeypatch.setattr(Protocol, "_finish", broken)
        protocol = Protocol()
        events = protocol.receive_data(b"".join(fragments(Opcode.TEXT, [b"a", b"b"])))
        assert events == [Failure(1011, "internal error")]
        assert isinstance(protocol.parser_exc, RuntimeError)
        assert protocol.state is CLOSING


class TestUTF8:
    """8.1 Handling Errors in UTF-8-Encoded Data: fail with 1007, as early as possible."""

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff",
            b"\xc0\xaf",  # overlong "/"
            b"\xed\xa0\x80",  # surrogate
            b"\xf4\x90\x80\x80",  # above U+10FFFF
            b"ok\xce",  # truncated at the end of the message
        ],
    )
    def test_invalid_text_message(self, payload: bytes) -> None:
        events = receive(frame(Opcode.TEXT, payload))
        assert_failure(events, 1007, "invalid UTF-8 in text message")
        assert receive_bytewise(frame(Opcode.TEXT, payload)) == events

    def test_truncated_at_the_end_of_a_fragmented_message(self) -> None:
        data = b"".join(fragments(Opcode.TEXT, [b"\xce\xba", b"\xce"]))
        assert_failure(receive(data), 1007)

    def test_valid_text(self) -> None:
        sample = "κόσμε — Hello-µ@ßöäüàá-UTF-8!! 😀 \U0010ffff \x00"
        assert receive(text(sample)) == [Message(sample)]
        assert receive_bytewise(text(sample)) == [Message(sample)]

    def test_code_point_split_across_chunks(self) -> None:
        data = text("€")
        # Header (6 bytes), then the three bytes of "€" one by one.
        assert receive_in_chunks(data, [6, 7, 8]) == [Message("€")]

    def test_fails_in_the_middle_of_a_frame(self) -> None:
        # Autobahn 6.4.3/6.4.4: one frame sent in chunks; fail before the rest arrives.
        payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited"
        data = frame(Opcode.TEXT, payload)
        protocol = Protocol()
        assert protocol.receive_data(data[: 6 + 11]) == []  # header + valid prefix
        assert_failure(protocol.receive_data(data[6 + 11 : 6 + 13]), 1007)  # "\xf4\x90"

    def test_fails_in_the_middle_of_a_fragmented_message(self) -> None:
        # Autobahn 6.4.1/6.4.2: valid first fragment, then the bad one, the rest never comes.
        first, second, _ = fragments(
            Opcode.TEXT, [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90", b"\x80"]
        )
        protocol = Protocol()
        assert protocol.receive_data(first) == []
        assert_failure(protocol.receive_data(second), 1007)

    def test_fails_at_the_first_bad_byte_of_a_surrogate(self) -> None:
        # "\xed\xa0" can't start any valid character; CPython's decoder alone waits one more.
        data = frame(Opcode.TEXT, b"ab\xed\xa0\x80")
        protocol = Protocol()
        assert protocol.receive_data(data[: 6 + 3]) == []  # "ab\xed" may still be valid
        assert_failure(protocol.receive_data(data[6 + 3 : 6 + 4]), 1007)

    def test_header_and_valid_prefix_give_nothing(self) -> None:
        data = frame(Opcode.TEXT, b"abc\xe2\x82\xac" * 10, fin=False)
        protocol = Protocol()
        assert protocol.receive_data(data[:-1]) == []
        assert protocol.receive_data(data[-1:]) == []
        assert protocol.receive_data(frame(Opcode.CONT, b"")) == [Message("abc€" * 10)]


class TestMessageSize:
    """10.4 Implementation-Specific Limits: 1009 from the header, never buffering past it."""

    def test_default_limit(self) -> None:
        assert Protocol().max_message_size == 2**20

    def test_at_the_limit(self) -> None:
        payload = b"x" * 2**20
        assert receive(frame(Opcode.BINARY, payload)) == [Message(payload)]

    def test_over_the_limit(self) -> None:
        events = receive(frame(Opcode.BINARY, b"x" * (2**20 + 1)))
        assert_failure(events, 1009, "message of 1048577 bytes exceeds the limit of 1048576")

    def test_decided_on_the_header(self) -> None:
        # 100 MB announced: only the header has arrived, and that is enough.
        header = bytes([0x82, 0x80 | 127]) + (100_000_000).to_bytes(8, "big") + MASK
        events = receive(header)
        assert_failure(events, 1009, "message of 100000000 bytes exceeds the limit of 1048576")

    def test_decided_before_the_masking_key(self) -> None:
        header = bytes([0x81, 0x80 | 127]) + (2_000_000).to_bytes(8, "big")  # no mask yet
        assert_failure(receive(header), 1009)

    def test_counted_across_fragments(self) -> None:
        pieces = [b"x" * 40, b"x" * 40, b"x" * 40]
        first, second, last = fragments(Opcode.BINARY, pieces)
        protocol = Protocol(max_message_size=100)
        assert protocol.receive_data(first + second) == []
        events = protocol.receive_data(last[:2])
        assert_failure(events, 1009, "message of 120 bytes exceeds the limit of 100")

    def test_fragment_message_says_at_least(self) -> None:
        first = fragments(Opcode.TEXT, [b"x" * 150, b""])[0]
        events = receive(first, max_message_size=100)
        assert_failure(events, 1009, "message of at least 150 bytes exceeds the limit of 100")

    def test_small_limit_on_small_frames(self) -> None:
        events = receive(text("1234567890") + text("12345678901"), max_message_size=10)
        assert events[0] == Message("1234567890")
        assert_failure(events, 1009)

    def test_no_limit(self) -> None:
        payload = b"x" * (2**20 + 1)
        assert receive(frame(Opcode.BINARY, payload), max_message_size=None) == [Message(payload)]

    def test_large_frame_in_small_chunks_is_not_buffered(self) -> None:
        # White-box: payload is consumed as it arrives, so unparsed bytes stay tiny.
        payload = os.urandom(2**20)
        data = frame(Opcode.BINARY, payload)
        protocol = Protocol()
        events: list[Event] = []
        for i in range(0, len(data), 4096):
            events += protocol.receive_data(data[i : i + 4096])
            assert len(protocol._rest) <= 14 + 125
        assert events == [Message(payload)]


class TestEndOfStream:
    """7.1.5 and 7.4.1: the TCP connection ends; 1006 if no Close frame came."""

    def test_eof_without_close(self) -> None:
        protocol = Protocol()
        assert protocol.receive_eof() == [Close(1006, "")]
        assert protocol.state is CLOSED
        assert protocol.close_received is False

    def test_eof_in_the_middle_of_a_frame(self) -> None:
        protocol = Protocol()
        assert protocol.receive_data(text("partial")[:5]) == []
        assert protocol.receive_eof() == [Close(1006, "")]
        assert protocol.state is CLOSED

    def test_eof_after_close(self) -> None:
        protocol = Protocol()
        protocol.receive_data(frame(Opcode.CLOSE, encode_close(1000)))
        assert protocol.receive_eof() == []
        assert protocol.state is CLOSED

    def test_eof_after_both_closes(self) -> None:
        protocol = Protocol()
        protocol.send_close()
        protocol.receive_data(frame(Opcode.CLOSE, encode_close(1000)))
        assert protocol.state is CLOSED
        assert protocol.receive_eof() == []

    def test_eof_twice_and_data_after_eof(self) -> None:
        protocol = Protocol()
        protocol.receive_eof()
        assert protocol.receive_eof() == []
        assert protocol.receive_data(text("late")) == []


class TestPerMessageDeflate:
    """RFC 7692 section 6: receiving compressed messages (RSV1 on the first frame)."""

    @staticmethod
    def deflate(**overrides: object) -> PerMessageDeflate:
        options: dict[str, object] = dict(
            server_window=12,
            client_window=15,
            server_no_context_takeover=False,
            client_no_context_takeover=False,
            memory_level=5,
            min_size=0,
        )
        options.update(overrides)
        return PerMessageDeflate(**options)  # type: ignore[arg-type]

    @staticmethod
    def compressed(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
        compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def test_a_compressed_text_message(self) -> None:
        protocol = Protocol(deflate=self.deflate())
        payload = self.compressed("κόσμε ".encode() * 100)
        assert protocol.receive_data(with_first_byte(0xC1, payload)) == [Message("κόσμε " * 100)]

    def test_fragments_of_a_compressed_message_split_anywhere(self) -> None:
        payload = self.compressed(b"abc" * 1000)
        pieces = [payload[:5], payload[5:40], payload[40:]]
        wire = with_first_byte(0x42, pieces[0])  # RSV1 + BINARY, not final
        wire += frame(Opcode.CONT, pieces[1], fin=False) + frame(Opcode.CONT, pieces[2])
        for cut in range(0, len(wire), 7):
            protocol = Protocol(deflate=self.deflate())
            events = protocol.receive_data(wire[:cut]) + protocol.receive_data(wire[cut:])
            assert events == [Message(b"abc" * 1000)]

    def test_context_takeover_and_uncompressed_messages_in_between(self) -> None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        wire = with_first_byte(0xC1, self.compressed(b"hello hello", compressor))
        wire += text("plain")
        wire += with_first_byte(0xC1, self.compressed(b"hello hello", compressor))
        events = Protocol(deflate=self.deflate()).receive_data(wire)
        assert events == [Message("hello hello"), Message("plain"), Message("hello hello")]

    def test_client_no_context_takeover_resets_between_messages(self) -> None:
        wire = b"".join(with_first_byte(0xC1, self.compressed(b"again")) for _ in range(3))
        protocol = Protocol(deflate=self.deflate(client_no_context_takeover=True))
        assert protocol.receive_data(wire) == [Message("again")] * 3

    def test_rsv1_on_a_continuation_or_control_frame_fails(self) -> None:
        protocol = Protocol(deflate=self.deflate())
        wire = with_first_byte(0x02, b"a") + with_first_byte(0xC0, b"b")
        assert_failure(protocol.receive_data(wire), 1002)
        protocol = Protocol(deflate=self.deflate())
        assert_failure(protocol.receive_data(with_first_byte(0xC9, b"")), 1002)

    def test_rsv2_and_rsv3_still_fail(self) -> None:
        protocol = Protocol(deflate=self.deflate())
        assert_failure(protocol.receive_data(with_first_byte(0xA2, b"x")), 1002)

    def test_a_compression_bomb_is_stopped_at_the_limit(self) -> None:
        payload = self.compressed(b"\0" * 10_000_000)  # 10 MB from about 10 KB
        protocol = Protocol(deflate=self.deflate(), max_message_size=2**20)
        assert_failure(protocol.receive_data(with_first_byte(0xC2, payload)), 1009)

    def test_a_message_inflating_to_exactly_the_limit_passes(self) -> None:
        payload = self.compressed(b"y" * 1000)
        protocol = Protocol(deflate=self.deflate(), max_message_size=1000)
        assert protocol.receive_data(with_first_byte(0xC2, payload)) == [Message(b"y" * 1000)]

    def test_corrupt_compressed_data_fails_with_1007(self) -> None:
        protocol = Protocol(deflate=self.deflate())
        assert_failure(protocol.receive_data(with_first_byte(0xC2, b"\xff\xff\xff\xff")), 1007)

    def test_invalid_utf8_inside_compressed_text_fails_with_1007(self) -> None:
        protocol = Protocol(deflate=self.deflate())
        payload = self.compressed(b"ok \xff")
        assert_failure(protocol.receive_data(with_first_byte(0xC1, payload)), 1007)
