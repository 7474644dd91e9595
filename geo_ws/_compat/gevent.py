"""Hooks into gevent's socket internals.

Tested on gevent 24.10 to 26.9 (libev and libuv loops).
"""

from __future__ import annotations

import socket
from typing import Any

from gevent.socket import wait_read

__all__ = ["read_watcher", "wait_readable"]


def read_watcher(sock: socket.socket) -> Any:
    """The event-loop watcher that wakes ``sock``'s readers, or ``None``.

    A gevent socket keeps one read watcher (``_read_event``) for its life; starting
    and stopping it costs nothing, where a new watcher per wait
    (:func:`gevent.socket.wait_read`) costs an allocation and a loop registration per
    read. ``None`` for a socket that has none (not a gevent socket).
    """
    return getattr(sock, "_read_event", None)


def wait_readable(sock: socket.socket, watcher: Any) -> None:
    """Block the calling greenlet until ``sock`` is readable.

    Args:
        sock: a gevent socket.
        watcher: its :func:`read_watcher`; ``None`` takes the public, slower way.
    """
    if watcher is None:
        wait_read(sock.fileno())
        return
    # gevent's own wait: raises the socket's cancel_wait_ex if the socket is closed.
    sock._wait(watcher)  # type: ignore[attr-defined]
