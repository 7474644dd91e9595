"""RFC 6455 on the wire: every way a client can break the protocol gets the right close
code over a real socket, with a reason that says what was wrong, and nobody else suffers.
"""

from __future__ import annotations

import os
import struct

import pytest
from flask import Flask

from geo_ws import WebSocket
from geo_ws.protocol.frames import Opcode, apply_mask, encode_close

from .helpers import RawClient, connect


def raw_frame(first: int, payload: bytes, *, masked: bool = True) -> bytes:
    """Any frame at all, even one encode_frame refuses to build: ``first`` is its first byte."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, length | (0x80 if masked else 0))
    else:
        header = struct.pack("!BBH", first, 126 | (0x80 if masked else 0), length)
    return header + (mask + apply_mask(payload, mask) if masked else payload)


FIN = 0x80

#: (name, bytes a client sends, expected close code, words the reason contains)
VIOLATIONS = [
    ("unmasked frame", raw_frame(FIN | Opcode.TEXT, b"hi", masked=False), 1002, "mask"),
    ("reserved bit RSV1", raw_frame(FIN | 0x40 | Opcode.TEXT, b"hi"), 1002, "reserved"),
    ("reserved bit RSV3", raw_frame(FIN | 0x10 | Opcode.BINARY, b"hi"), 1002, "reserved"),
    ("reserved data opcode", raw_frame(FIN | 0x3, b"hi"), 1002, "opcode"),
    ("reserved control opcode", raw_frame(FIN | 0xB, b""), 1002, "opcode"),
    ("fragmented ping", raw_frame(Opcode.PING, b"x"), 1002, "control"),
    ("ping of 126 bytes", raw_frame(FIN | Opcode.PING, b"x" * 126), 1002, "control"),
    ("continuation without a start", raw_frame(FIN | Opcode.CONT, b"x"), 1002, "continuation"),
    ("new message inside a fragmented one",
     raw_frame(Opcode.TEXT, b"a") + raw_frame(FIN | Opcode.TEXT, b"b"), 1002, "fragmented"),
    ("close payload of one byte", raw_frame(FIN | Opcode.CLOSE, b"\x03"), 1002, "close"),
    ("close code 999", raw_frame(FIN | Opcode.CLOSE, encode_close(999)), 1002, "999"),
    ("close code 1005", raw_frame(FIN | Opcode.CLOSE, encode_close(1005)), 1002, "1005"),
    ("invalid UTF-8 text", raw_frame(FIN | Opcode.TEXT, b"\xce\xba\xff"), 1007, "UTF-8"),
    ("invalid UTF-8 close reason",
     raw_frame(FIN | Opcode.CLOSE, b"\x03\xe8\xff\xfe"), 1007, "UTF-8"),
    ("too big", raw_frame(FIN | Opcode.BINARY, b"x" * 2000), 1009, "2000"),
]  # fmt: skip


@pytest.fixture
def address(serve) -> str:
    app = Flask(__name__)
    echo = WebSocket(app, "/echo", max_message_size=1000)
    echo.on("message")(lambda msg: msg)
    return serve(app)


@pytest.mark.parametrize(
    ("sent", "code", "words"),
    [violation[1:] for violation in VIOLATIONS],
    ids=[violation[0] for violation in VIOLATIONS],
)
def test_a_violation_gets_its_close_code_and_a_reason(
    address: str, sent: bytes, code: int, words: str
) -> None:
    bystander = connect(address, "/echo")
    client = RawClient(address, "/echo")
    client.send_text("valid first")
    client.sock.sendall(sent)
    # Events are processed in order: the valid message is echoed before the failure.
    assert client.recv() == "valid first"
    close = client.recv_close()
    assert close.code == code
    assert words.lower() in close.reason.lower()
    assert client.at_eof()  # the server closes TCP after failing the connection
    bystander.send("still served")
    assert bystander.recv() == "still served"


def test_invalid_utf8_fails_before_the_message_is_complete(address: str) -> None:
    client = RawClient(address, "/echo")
    client.sock.sendall(raw_frame(Opcode.TEXT, "héllo".encode() + b"\xff"))  # no FIN: more to come
    close = client.recv_close()  # without waiting for the final fragment
    assert close.code == 1007


def test_invalid_utf8_fails_before_the_frame_is_complete(address: str) -> None:
    client = RawClient(address, "/echo")
    payload = b"fine" + b"\xc0\xaf" + b"x" * 500
    frame = raw_frame(FIN | Opcode.TEXT, payload)
    client.sock.sendall(frame[: 8 + 10])  # header, mask and the first 10 bytes only
    assert client.recv_close().code == 1007


def test_a_code_point_split_across_fragments_is_valid(address: str) -> None:
    client = RawClient(address, "/echo")
    encoded = "κόσμε".encode()
    client.sock.sendall(
        raw_frame(Opcode.TEXT, encoded[:3]) + raw_frame(FIN | Opcode.CONT, encoded[3:])
    )
    assert client.recv() == "κόσμε"


def test_the_size_limit_counts_fragments_as_they_arrive(address: str) -> None:
    client = RawClient(address, "/echo")
    client.sock.sendall(raw_frame(Opcode.BINARY, b"x" * 600))
    client.sock.sendall(raw_frame(FIN | Opcode.CONT, b"x" * 600))
    close = client.recv_close()
    assert close.code == 1009


def test_a_huge_announced_frame_fails_from_its_header(address: str) -> None:
    client = RawClient(address, "/echo")
    # 8 GiB announced, nothing of it sent: the server must not wait for (or buffer) it.
    client.sock.sendall(struct.pack("!BBQ", FIN | Opcode.BINARY, 0x80 | 127, 2**33) + os.urandom(4))
    assert client.recv_close().code == 1009
