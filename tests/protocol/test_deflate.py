"""permessage-deflate negotiation and streams (geo_ws.protocol.deflate); compression on the wire."""

from __future__ import annotations

import zlib

import pytest
import websockets.sync.client
from flask import Flask

from geo_ws import WebSocket
from geo_ws.protocol.deflate import DeflateOptions, PerMessageDeflate, negotiate

DEFAULT = DeflateOptions()


def test_a_plain_offer_gets_the_server_window() -> None:
    accepted = negotiate("permessage-deflate", DEFAULT)
    assert accepted is not None
    header, deflate = accepted
    assert header == "permessage-deflate; server_max_window_bits=12"
    assert (deflate.server_window, deflate.client_window) == (12, 15)


def test_client_max_window_bits_is_answered_only_when_offered() -> None:
    header, deflate = negotiate("permessage-deflate; client_max_window_bits", DEFAULT)  # type: ignore[misc]
    assert "client_max_window_bits=12" in header and deflate.client_window == 12
    header, deflate = negotiate("permessage-deflate; client_max_window_bits=10", DEFAULT)  # type: ignore[misc]
    assert "client_max_window_bits=10" in header and deflate.client_window == 10


def test_the_client_may_lower_the_server_window_but_not_to_8() -> None:
    header, deflate = negotiate("permessage-deflate; server_max_window_bits=10", DEFAULT)  # type: ignore[misc]
    assert deflate.server_window == 10 and "server_max_window_bits=10" in header
    assert negotiate("permessage-deflate; server_max_window_bits=8", DEFAULT) is None


def test_context_takeover_flags_are_honoured_and_can_be_imposed() -> None:
    header, deflate = negotiate(  # type: ignore[misc]
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover", DEFAULT
    )
    assert deflate.server_no_context_takeover and deflate.client_no_context_takeover
    assert "server_no_context_takeover" in header and "client_no_context_takeover" in header
    imposed = DeflateOptions(client_no_context_takeover=True)
    header, deflate = negotiate("permessage-deflate", imposed)  # type: ignore[misc]
    assert deflate.client_no_context_takeover and "client_no_context_takeover" in header


@pytest.mark.parametrize(
    "offers",
    [
        "x-webkit-deflate-frame",
        "permessage-deflate; unknown=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=1",
        "",
    ],
)
def test_unacceptable_offers_are_declined(offers: str) -> None:
    assert negotiate(offers, DEFAULT) is None


def test_the_first_acceptable_offer_wins() -> None:
    offers = (
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits"
    )
    header, _ = negotiate(offers, DEFAULT)  # type: ignore[misc]
    assert header == "permessage-deflate; client_max_window_bits=12; server_max_window_bits=12"


def test_options_are_checked() -> None:
    for bad in ({"server_max_window_bits": 8}, {"client_max_window_bits": 16}, {"memory_level": 0}):
        with pytest.raises(ValueError):
            DeflateOptions(**bad)  # type: ignore[arg-type]


def test_compress_round_trips_with_and_without_context_takeover() -> None:
    for no_takeover in (False, True):
        deflate = PerMessageDeflate(
            server_window=12,
            client_window=15,
            server_no_context_takeover=no_takeover,
            client_no_context_takeover=False,
            memory_level=5,
            min_size=0,
        )
        inflater = zlib.decompressobj(-12)
        for _ in range(3):
            data = deflate.compress(b"repetitive " * 50)
            assert len(data) < 100
            assert inflater.decompress(data + b"\x00\x00\xff\xff") == b"repetitive " * 50


@pytest.mark.parametrize("takeover", [True, False])
def test_compression_on_the_wire_against_python_websockets(serve, takeover: bool) -> None:
    app = Flask(__name__)
    echo = WebSocket(
        app,
        "/echo",
        compression=DeflateOptions(server_no_context_takeover=not takeover, min_size=10),
    )
    echo.on("message")(lambda msg: msg)

    @echo.on("connect")
    def connect(ws):
        ws.sync_broadcast("short")  # under min_size: sent uncompressed

    address = serve(app)
    with websockets.sync.client.connect(f"ws://{address}/echo", compression="deflate") as client:
        extensions = client.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate")
        assert client.recv(timeout=5) == "short"
        for message in ("hello " * 200, b"\x00\x01" * 3000, "κόσμε" * 100):
            client.send(message)
            assert client.recv(timeout=5) == message


def test_compression_is_off_unless_the_endpoint_enables_it(serve) -> None:
    app = Flask(__name__)
    WebSocket(app, "/plain").on("message")(lambda msg: msg)
    with pytest.raises(ValueError, match="compression"):
        WebSocket(app, "/bad", compression="gzip")
    address = serve(app)
    with websockets.sync.client.connect(f"ws://{address}/plain", compression="deflate") as client:
        assert "Sec-WebSocket-Extensions" not in client.response.headers
        client.send("uncompressed")
        assert client.recv(timeout=5) == "uncompressed"
