"""Redis clients for the broker and the Emitter: from a URL, or through Redis Sentinel.

Plain URLs (``redis://``, ``rediss://``, ``unix://``) go to
:meth:`redis.Redis.from_url`. With Sentinel, the client asks the sentinels where the
master of a service is each time it connects, so after a failover its next connection
reaches the new master; the broker's reconnecting loops and the Emitter's next call
follow it. Sentinel is named by a URL::

    redis+sentinel://[[USERNAME:]PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]

e.g. ``redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster/0``: the sentinels, the
service name they monitor, and the database (default 0). The password (and user name)
are the Redis servers'; sentinels that require one of their own take a
:class:`redis.sentinel.Sentinel` made by the app (``sentinel_kwargs``) instead of a URL,
with the service name beside it. No gevent: the Emitter uses this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    import redis
    from redis.sentinel import Sentinel

__all__ = ["REDIS_SCHEMES", "SENTINEL_SCHEME", "SentinelURL", "make_client", "parse_sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel://"
"""The scheme of Sentinel URLs."""
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
"""The URL schemes :func:`make_client` takes."""
#: Seconds a sentinel may take to answer where the master is (unless the app's
#: ``Sentinel`` says otherwise): one sentinel down must not stall a reconnection.
SENTINEL_TIMEOUT = 1.0


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    """The sentinels' addresses."""
    service_name: str
    """The name of the master the sentinels monitor."""
    db: int = 0
    """The database number."""
    username: str | None = None
    """The Redis servers' user name (ACL), if any."""
    password: str | None = None
    """The Redis servers' password, if any."""


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of ``redis+sentinel://[[USERNAME:]PASSWORD@]HOST:PORT[,...]/SERVICE[/DB]``.

    Raises:
        ValueError: not such a URL, or a part is missing or malformed.
    """
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"{url!r} is not a {SENTINEL_SCHEME} URL")
    credentials, _, rest = url[len(SENTINEL_SCHEME) :].rpartition("@")
    hosts, _, path = rest.partition("/")
    service_name, _, db = path.partition("/")
    if not hosts or not service_name:
        raise ValueError(
            f"{url!r}: use {SENTINEL_SCHEME}[PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
        )
    sentinels = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":")
        if not colon or not name or not port.isdigit():
            raise ValueError(f"{url!r}: a sentinel must be HOST:PORT, not {host!r}")
        sentinels.append((name.strip("[]"), int(port)))
    if db and not db.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, not {db!r}")
    username, colon, password = credentials.rpartition(":")
    return SentinelURL(
        sentinels,
        unquote(service_name),
        int(db or 0),
        unquote(username) if colon and username else None,
        unquote(password) if credentials else None,
    )


def make_client(
    target: str | Sentinel, service_name: str | None = None, **options: Any
) -> redis.Redis:
    """A client of its own for a Redis URL, a Sentinel URL or a :class:`Sentinel`.

    Args:
        target: a URL of one of :data:`REDIS_SCHEMES`, or a ``Sentinel``.
        service_name: the master's service name, with a ``Sentinel`` (a URL says it).
        **options: the connections' options (``socket_timeout``, ``retry``...): passed to
            :meth:`redis.Redis.from_url` or :meth:`redis.sentinel.Sentinel.master_for`.

    Raises:
        ValueError: a URL of another scheme or malformed; a ``Sentinel`` without
            ``service_name``.
    """
    import redis
    from redis.sentinel import Sentinel

    if isinstance(target, str):
        if not target.startswith(REDIS_SCHEMES):
            schemes = ", ".join(REDIS_SCHEMES)
            raise ValueError(f"no Redis client for {target!r}: use one of {schemes}")
        if not target.startswith(SENTINEL_SCHEME):
            return redis.Redis.from_url(target, **options)
        parsed = parse_sentinel_url(target)
        timeouts = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
        target = Sentinel(parsed.sentinels, sentinel_kwargs=timeouts)
        service_name = parsed.service_name
        options = {
            "db": parsed.db,
            "username": parsed.username,
            "password": parsed.password,
            **options,
        }
    elif service_name is None:
        raise ValueError("a Sentinel needs the service name of the master")
    return target.master_for(service_name, redis_class=redis.Redis, **options)
