"""Connection ids: ``NODE.TOKEN``, unique across processes and hosts, and unguessable.

``NODE`` names the process that holds the connection (:func:`node_id`), so a broker
knows where to send a ``send_to`` or a ``close``; ``TOKEN`` is 128 random bits, so that
knowing an id (one's own, another client's seen in a message) tells nothing about the
next ones: ids may be handed to clients. No gevent: the Emitter uses :func:`node_of`.
"""

from __future__ import annotations

import os
import secrets
import uuid

__all__ = ["new_id", "node_id", "node_of"]

_node = ""


def node_id() -> str:
    """This process's node: random, drawn again after a fork.

    Workers forked from one master (gunicorn ``--preload`` included) each draw their
    own, so an id says which process holds the connection.
    """
    global _node
    if not _node:
        _node = uuid.uuid4().hex[:16]
    return _node


def _forget_node() -> None:
    global _node
    _node = ""


# Drawn again in a forked child; asking the pid at every handshake cost a system call.
os.register_at_fork(after_in_child=_forget_node)


def new_id() -> str:
    """Return a new connection id: ``NODE.TOKEN``.

    ``NODE`` is :func:`node_id`; ``TOKEN`` is 16 random bytes from :mod:`secrets`,
    URL-safe Base64 (22 characters, no dot).
    """
    return f"{node_id()}.{secrets.token_urlsafe(16)}"


def node_of(connection_id: str) -> str:
    """The node part of a connection id (``""`` for an id not made by :func:`new_id`)."""
    node, dot, _ = connection_id.rpartition(".")
    return node if dot else ""
