"""The process a server runs in: monkey-patching checks and memory settings."""

from __future__ import annotations

import ctypes
import gc
import os
import sys

import gevent
from gevent.monkey import get_original, is_object_patched

__all__ = ["LATE_PATCH_HINT", "PATCH_HINT", "settle_process", "unpatched_references"]

PATCH_HINT = """geo_ws needs gevent's monkey-patching, or one blocking call stalls every client.
Start your script with these two lines, before any other import:

    from gevent import monkey
    monkey.patch_all()

(`geo-ws run module:app` and geo_ws's gunicorn worker do this for you.)"""

LATE_PATCH_HINT = (
    "the process was monkey-patched too late: modules imported before kept what gevent "
    "patches, blocking, as it was: %s.\n"
    "Patch before any other import: start your script with these two lines,\n\n"
    "    from gevent import monkey\n"
    "    monkey.patch_all()\n\n"
    "or serve with `geo-ws run module:app`, which does it for you (`flask geo-ws run` can "
    "only patch once Flask has imported the app)."
)

#: What gevent patches that a module may have taken (``from time import sleep``) before.
PATCHED_NAMES = {
    "socket": ("socket", "create_connection", "socketpair", "getaddrinfo"),
    "time": ("sleep",),
    "select": ("select", "poll"),
    "threading": ("Lock", "RLock", "Event", "Condition", "Semaphore", "local", "get_ident"),
    "_thread": ("allocate_lock", "get_ident", "start_new_thread"),
}


def unpatched_references() -> list[str]:
    """What modules outside the standard library, gevent and geo_ws (its client keeps
    the original socket on purpose) hold of what gevent patched, as it was before:
    those modules were imported before the patching.

    Returns:
        ``module.attribute (original)`` for each, e.g. ``werkzeug.routing.map.Lock
        (_thread.allocate_lock)``.
    """
    originals = {
        id(get_original(module, name)): f"{module}.{name}"
        for module, names in PATCHED_NAMES.items()
        for name in names
        if is_object_patched(module, name)
    }
    found = []
    for module_name, module in list(sys.modules.items()):
        top = module_name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ("gevent", "greenlet", "geo_ws"):
            continue
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            original = originals.get(id(value))
            if original is not None:
                found.append(f"{module_name}.{attribute} ({original})")
    return found


def settle_process() -> None:
    """Before serving: keep the collector, the allocator and gevent's bookkeeping off
    the hot path (:func:`run` and :class:`geo_ws.server.gunicorn.Worker` call it).

    What exists now (the app, every module) lives as long as the process: frozen, it
    is left out of the full collections that thousands of connections trigger, which
    then walk the connections only. Young collections wait for 10 000 new objects
    instead of 700: a handshake allocates hundreds that die by reference counting, and
    a collection every few handshakes cost about 15 % of their rate. glibc keeps up to
    4 MiB of free heap instead of returning it at every large message (see
    ``_keep_heap``). And gevent stops recording each greenlet's spawning stack, a
    debugging aid that costs every connection a stack walk and a few objects
    (``GEVENT_TRACK_GREENLET_TREE=1`` keeps it).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
        gevent.config.track_greenlet_tree = False
    _keep_heap()


#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_heap() -> None:
    """Keep glibc from giving the top of the heap back at every message.

    By default glibc returns the heap's top to the system once 128 KiB of it is free,
    and raises that bar only after freeing a block of 128 KiB or more. Messages of
    tens of KiB then grow and shrink the heap at every one, each time faulting fresh
    pages in: 64 KiB echo lost a third of its throughput to ``brk`` and page faults.
    Free memory up to 4 MiB stays; blocks from 1 MiB (large messages) are mapped
    apart, as glibc does by default from 128 KiB. ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` in the environment win. Nothing happens without glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        mallopt(_M_TRIM_THRESHOLD, 4 * 2**20)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, 2**20)
