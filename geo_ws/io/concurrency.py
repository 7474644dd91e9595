"""Running coroutines and blocking calls without stalling the gevent hub.

``async def`` handlers run as tasks of one asyncio event loop per process, whose
selector is gevent's, so ``await asyncio.sleep(1)`` or an awaited geo_ws send yields
to every other greenlet. :func:`run_blocking` moves a call that gevent cannot make
cooperative (a C extension holding the GIL or a blocking syscall) to gevent's
threadpool.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import gevent
import gevent.selectors
from gevent.event import AsyncResult

from .._compat.asyncio import no_running_loop

__all__ = ["run_blocking", "run_coroutine"]

T = TypeVar("T")
P = ParamSpec("P")

_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0


class _Selector(gevent.selectors.DefaultSelector):
    """gevent's selector, hiding the loop from other greenlets while it waits.

    asyncio records the running loop per thread, and all greenlets share a thread:
    without this, a sync handler calling ``asyncio.run()`` would be told a loop is
    already running whenever the shared loop is idle.
    """

    def select(self, timeout: float | None = None) -> Any:
        with no_running_loop():
            return super().select(timeout)


def _shared_loop() -> asyncio.AbstractEventLoop:
    """The process's loop, started on first use (and again in a forked child)."""
    global _loop, _loop_pid
    if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
        _loop = asyncio.SelectorEventLoop(_Selector())
        _loop_pid = os.getpid()
        gevent.spawn(_loop.run_forever)
    return _loop


def run_coroutine(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` on the shared loop and block this greenlet until it is done.

    The coroutine sees the caller's context variables (Flask's request context
    included). If this greenlet is killed meanwhile, the task is cancelled.
    """
    loop = _shared_loop()
    context = contextvars.copy_context()
    done: AsyncResult[T] = AsyncResult()
    tasks: list[asyncio.Future[T]] = []

    def finished(task: asyncio.Future[T]) -> None:
        if task.cancelled():
            done.set_exception(asyncio.CancelledError())
        elif task.exception() is not None:
            done.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            done.set(task.result())

    def start() -> None:
        # Runs inside context.run, so the task copies the caller's context.
        task = asyncio.ensure_future(awaitable, loop=loop)
        tasks.append(task)
        task.add_done_callback(finished)

    # call_soon_threadsafe wakes the loop's selector; plain call_soon would not.
    loop.call_soon_threadsafe(context.run, start)
    try:
        return cast(T, done.get())
    except BaseException:
        if tasks and not tasks[0].done():
            loop.call_soon_threadsafe(tasks[0].cancel)
        raise


def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in gevent's threadpool; only this greenlet waits for it.

    Use it for calls that gevent's monkey-patching cannot make cooperative, such as
    a C database driver or a CPU-bound function that releases the GIL.
    """
    return gevent.get_hub().threadpool.apply(fn, args, kwargs)
