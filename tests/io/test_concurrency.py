"""Coroutines on the shared loop and blocking calls in the threadpool (geo_ws.io.concurrency)."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time

import gevent
import pytest
from gevent.monkey import get_original

from geo_ws.io.concurrency import run_blocking, run_coroutine

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


def test_a_coroutine_result_comes_back() -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert run_coroutine(add(1, 2)) == 3


def tick(count: int, interval: float) -> gevent.Greenlet:
    """A greenlet that notes the time every ``interval``; it returns the largest gap seen."""

    def ticker() -> float:
        ticks = []
        for _ in range(count):
            ticks.append(time.monotonic())
            gevent.sleep(interval)
        return max(later - earlier for earlier, later in itertools.pairwise(ticks))

    return gevent.spawn(ticker)


def test_coroutines_wait_together_without_blocking_greenlets() -> None:
    started = time.monotonic()
    ticker = tick(20, 0.01)
    sleepers = [gevent.spawn(run_coroutine, asyncio.sleep(0.3, result=n)) for n in range(20)]
    assert [sleeper.get(timeout=5) for sleeper in sleepers] == list(range(20))
    assert time.monotonic() - started < 1.0  # together, not one after the other
    assert ticker.get(timeout=5) < 0.1


def test_exceptions_propagate() -> None:
    async def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        run_coroutine(fail())


def test_the_caller_context_is_visible() -> None:
    async def read() -> str:
        return request_id.get()

    request_id.set("r-42")
    assert run_coroutine(read()) == "r-42"


def test_asyncio_run_still_works_in_sync_code_beside_the_shared_loop() -> None:
    run_coroutine(asyncio.sleep(0))  # the shared loop exists and idles
    assert asyncio.run(asyncio.sleep(0, result="own loop")) == "own loop"


def test_run_blocking_keeps_other_greenlets_running() -> None:
    ticker = tick(10, 0.02)
    blocking_sleep = get_original("time", "sleep")
    assert run_blocking(lambda seconds: blocking_sleep(seconds) or "done", 0.3) == "done"
    assert ticker.get(timeout=5) < 0.1


def test_run_blocking_passes_keyword_arguments() -> None:
    def join(*parts: str, sep: str = "") -> str:
        return sep.join(parts)

    assert run_blocking(join, "a", "b", sep="-") == "a-b"
