"""The Emitter (geo_ws.delivery.emitter) in a process of its own, without gevent: what a
cron job or a Celery worker does (sends across nodes: tests/delivery/test_broker.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from geo_ws.delivery.broker import RedisBroker
from tests.helpers import RawClient
from tests.live_apps.cluster import create_app
from tests.live_apps.process import run_python
from tests.live_apps.redis_server import RedisServer, namespace, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

#: Sends with the Emitter (URL, namespace and a connection id as arguments), then prints
#: what the send_to returned and which of the I/O libraries a script must not need got
#: imported.
CRON_JOB = """
import sys
from geo_ws import Emitter

emitter = Emitter(sys.argv[1], namespace=sys.argv[2])
emitter.broadcast("/ws", "from cron")
print(emitter.send_to(sys.argv[3], "just you"))
emitter.disconnect()
print(sorted({m.split(".")[0] for m in sys.modules} & {"gevent", "flask", "werkzeug"}))
"""


def test_the_emitter_imports_neither_gevent_nor_flask() -> None:
    result = run_python(
        "-c",
        "import geo_ws.delivery.emitter, sys; "
        "assert not any(m.split('.')[0] in ('gevent', 'flask', 'werkzeug') for m in sys.modules)",
    )
    assert result.returncode == 0, result.stderr


def test_a_process_without_gevent_sends_through_the_emitter(
    serve: Callable[[Any], str], redis_server: RedisServer
) -> None:
    ns = namespace()
    broker = RedisBroker(redis_server.url, namespace=ns)
    try:
        raw = RawClient(serve(create_app(broker)), "/ws")
        connection_id = json.loads(raw.recv())["id"]
        result = run_python("-c", CRON_JOB, redis_server.url, ns, connection_id)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["1", "[]"]  # one node took the send_to
        assert [raw.recv(), raw.recv()] == ["from cron", "just you"]
    finally:
        broker.stop()
