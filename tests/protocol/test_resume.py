"""The resume wire (geo_ws.protocol.resume): positioned frames, the first messages both
ways, and the close code for each kind of bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.outgoing import Outgoing
from geo_ws.protocol.resume import (
    Hello,
    Resume,
    ResumeError,
    Start,
    parse_first,
    parse_hello,
    parse_positioned,
    positioned,
)

offsets = st.integers(min_value=0, max_value=2**63 - 1)


@given(offsets, st.text())
def test_a_positioned_text_message_reads_back(offset: int, text: str) -> None:
    message = positioned(Outgoing(text), offset)
    assert message.opcode == Opcode.TEXT
    data = message.payload.decode() if isinstance(message.payload, bytes) else ""
    assert data.startswith(f"{offset}:")
    assert parse_positioned(data) == (offset, text)


@given(offsets, st.binary())
def test_a_positioned_binary_message_reads_back(offset: int, payload: bytes) -> None:
    message = positioned(Outgoing(payload), offset)
    assert message.opcode == Opcode.BINARY
    assert bytes(message.payload)[:8] == offset.to_bytes(8, "big")
    assert parse_positioned(bytes(message.payload)) == (offset, payload)


def test_a_positioned_frame_is_the_message_with_its_offset() -> None:
    assert positioned(Outgoing("a:b"), 42).frame == Outgoing("42:a:b").frame
    assert positioned(Outgoing(memoryview(b"xy")), 1).payload == b"\0" * 7 + b"\1xy"


def test_control_messages_are_objects() -> None:
    assert parse_positioned('{"type": "later"}') == {"type": "later"}


@pytest.mark.parametrize(
    "data", ["hello", ":x", "-1:x", "1a:x", "١:x", "9" * 20 + ":x", "{not json", b"short"]
)
def test_a_message_without_its_offset_fails_with_1002(data: str | bytes) -> None:
    with pytest.raises(ResumeError) as info:
        parse_positioned(data)
    assert info.value.code == 1002


def test_first_messages_read_back() -> None:
    assert parse_first(Start().encode()) == Start()
    resume = Resume("s" * 43, "epoch", 12)
    assert parse_first(resume.encode()) == resume
    assert parse_first('{"type": "resume", "session": "s", "epoch": "", "offset": 0}') == Resume(
        "s", "", 0
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"type": "start"}', 1003),
        ("", 1002),
        ("start", 1002),
        ("[1, 2]", 1002),
        ("[" * 100_000, 1002),
        ('{"type": "stop"}', 1002),
        ('{"type": "resume", "session": "s", "epoch": "e"}', 1002),
        ('{"type": "resume", "session": 1, "epoch": "e", "offset": 1}', 1002),
        ('{"type": "resume", "session": "s", "epoch": "e", "offset": "1"}', 1002),
        ('{"type": "resume", "session": "s", "epoch": "e", "offset": 1.5}', 1002),
        ('{"type": "resume", "session": "s", "epoch": "e", "offset": true}', 1002),
        ('{"type": "resume", "session": "", "epoch": "e", "offset": 1}', 1008),
        ('{"type": "resume", "session": "' + "s" * 129 + '", "epoch": "e", "offset": 1}', 1008),
        ('{"type": "resume", "session": "s", "epoch": "' + "e" * 129 + '", "offset": 1}', 1008),
        ('{"type": "resume", "session": "s", "epoch": "e", "offset": -1}', 1008),
        ('{"type": "resume", "session": "s", "epoch": "e", "offset": 9223372036854775808}', 1008),
    ],
)
def test_a_bad_first_message_gets_its_close_code(data: str | bytes, code: int) -> None:
    with pytest.raises(ResumeError) as info:
        parse_first(data)
    assert info.value.code == code


@given(st.text(max_size=300))
def test_any_text_is_a_first_message_or_a_resume_error(data: str) -> None:
    try:
        parse_first(data)
    except ResumeError as exc:
        assert exc.code in (1002, 1008)


def test_a_hello_reads_back() -> None:
    hello = Hello("n.t", "sid", "ep", 7, True, False, None)
    assert parse_hello(hello.encode()) == hello
    assert '"type":"hello"' in hello.encode()


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        "[]",
        '{"type": "hello"}',
        Hello("n.t", "sid", "ep", 7, True, False, None).encode().replace("hello", "start"),
        Hello("n.t", "sid", "ep", 7, True, False, None).encode().replace("true", "1"),
        Hello("n.t", "sid", "ep", 7, True, False, None).encode().replace("null", '"3"'),
    ],
)
def test_a_bad_hello_fails_with_1002(data: str | bytes) -> None:
    with pytest.raises(ResumeError) as info:
        parse_hello(data)
    assert info.value.code == 1002
