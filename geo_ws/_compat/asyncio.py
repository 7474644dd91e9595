"""Hooks into asyncio's private state.

Tested on CPython 3.10 to 3.13.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["no_running_loop"]


@contextmanager
def no_running_loop() -> Iterator[None]:
    """Hide this thread's running loop while the body runs.

    asyncio records the running loop per thread, and all greenlets share one: while the
    shared loop waits in its selector, a sync handler calling ``asyncio.run()`` must not
    be told that a loop is already running. There is no public way to unset it
    (``asyncio.events._set_running_loop``, the function ``asyncio.run`` itself uses).
    """
    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(loop)
