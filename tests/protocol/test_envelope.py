"""The broker envelope (geo_ws.protocol.envelope): encoding, checks on decoding, numbering,
and no I/O library imported."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo_ws.delivery.ids import node_id
from geo_ws.protocol.envelope import (
    Envelope,
    Kind,
    Sequencer,
    channel_all,
    channel_of,
    close_payload,
    tag,
    untag,
)
from geo_ws.protocol.frames import EXTERNAL_CLOSE_CODES, Opcode, encode_close
from geo_ws.protocol.outgoing import Outgoing
from tests.helpers import QUICK
from tests.live_apps.process import run_python


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    """Any envelope a broker or an emitter may publish."""
    kind = draw(st.sampled_from(Kind))
    opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
    if kind is Kind.CLOSE:
        opcode = Opcode.CLOSE
        code = draw(st.sampled_from(sorted(EXTERNAL_CLOSE_CODES)))
        payload = encode_close(code, draw(st.text(max_size=20)))
    elif opcode == Opcode.TEXT:
        payload = draw(st.text(max_size=100)).encode()
    else:
        payload = draw(st.binary(max_size=300))
    return Envelope(
        kind,
        opcode,
        draw(st.text(max_size=50)),
        draw(st.text(max_size=50)),
        payload,
        draw(st.text(alphabet="0123456789abcdef/", max_size=40)),
        draw(st.integers(min_value=0, max_value=2**64 - 1)),
    )


@QUICK
@given(envelope=envelopes())
def test_envelopes_round_trip(envelope: Envelope) -> None:
    encoded = envelope.encode()
    assert encoded.endswith(envelope.payload)  # the payload travels as is, not re-encoded
    assert Envelope.decode(encoded) == envelope


@QUICK
@given(envelope=envelopes(), cut=st.integers(min_value=0), index=st.integers(), byte=st.binary())
def test_damaged_envelopes_decode_or_raise_value_error_only(
    envelope: Envelope, cut: int, index: int, byte: bytes
) -> None:
    data = bytearray(envelope.encode())
    if data and byte:
        data[index % len(data)] = byte[0]
    try:
        Envelope.decode(bytes(data[: len(data) - cut % (len(data) + 1)]))
    except ValueError:
        pass  # anything else would kill a listener


def test_undecodable_envelopes_are_refused_with_what_is_wrong() -> None:
    def encode(kind: Kind, opcode: int, payload: bytes) -> bytes:
        return Envelope(kind, opcode, "/ws", "n.1", payload, "o", 1).encode()

    good = Envelope(Kind.BROADCAST, Opcode.TEXT, "/ws", "", b"hi", "o", 1).encode()
    for bad, what in [
        (b"", "truncated"),
        (good[:5], "truncated"),
        (good[:14], "truncated"),
        (good[:3] + b"\x00" * 8 + b"\xff", "truncated"),
        (b"\x01" + good[1:], "version 1"),
        (good[:1] + b"\x09" + good[2:], "unknown envelope kind 9"),
        (good[:12] + b"\xff" + good[13:], "undecodable origin"),
        (encode(Kind.BROADCAST, Opcode.TEXT, b"caf\xc3"), "invalid UTF-8 .* \\(byte 3\\)"),
        (encode(Kind.SEND_TO, Opcode.PING, b""), "SEND_TO envelope with opcode 9"),
        (encode(Kind.CLOSE, Opcode.TEXT, encode_close(1000)), "CLOSE envelope with opcode 1"),
        (encode(Kind.CLOSE, Opcode.CLOSE, b""), "without a close code"),
        (encode(Kind.CLOSE, Opcode.CLOSE, encode_close(1006)), "invalid close code 1006"),
    ]:
        with pytest.raises(ValueError, match=what):
            Envelope.decode(bad)


def test_a_sequencer_numbers_each_channel_from_one() -> None:
    sequencer = Sequencer(node_id())
    assert sequencer.origin.startswith(node_id() + "/")
    numbers = [
        Envelope.decode(sequencer.envelope(channel, Kind.BROADCAST, "/ws", "", 1, b"")).seq
        for channel in ("all", "all", "node:x", "all", "node:x")
    ]
    assert numbers == [1, 2, 1, 3, 2]


def test_a_received_envelope_becomes_the_frame_a_local_send_would_build() -> None:
    for data in ("text é", b"\x00binary"):
        message = Outgoing(data)
        envelope = Envelope(Kind.BROADCAST, message.opcode, "/ws", "", bytes(message.payload))
        received = Envelope.decode(envelope.encode()).outgoing()
        assert (received.opcode, received.frame) == (message.opcode, message.frame)


def test_channels_and_close_payloads() -> None:
    assert channel_all("ns") == "ns:all"
    assert channel_of("ns", "abc") == "ns:node:abc"
    assert close_payload(4000, "bye") == encode_close(4000, "bye")
    for code in (1005, 1006, 999, 5000):
        with pytest.raises(ValueError, match=f"close code {code} may not be sent"):
            close_payload(code)


def test_the_envelope_imports_no_io_library() -> None:
    result = run_python(
        "-c",
        "import sys, geo_ws.protocol.envelope\n"
        "banned = ('gevent', 'greenlet', 'flask', 'werkzeug', 'redis')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_published_envelope_carries_its_position_in_the_log() -> None:
    envelope = Envelope(Kind.BROADCAST, Opcode.TEXT, "/ws", "", b"a:b", "o", 1).encode()
    assert tag("e1", 42, envelope) == b"e1:42:" + envelope
    assert untag(tag("e1", 42, envelope)) == ("e1", 42, envelope)
    for bad in (b"", b"e1:42", b":42:x", b"e1:forty:x", b"\xff:1:x", envelope):
        with pytest.raises(ValueError, match="position"):
            untag(bad)
