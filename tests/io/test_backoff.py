"""Delays between reconnection attempts (geo_ws.io.backoff)."""

from __future__ import annotations

import random
import statistics

import pytest

from geo_ws.io.backoff import Backoff, Jitter

#: The exponential delays of Backoff(0.1, 1.0), before jitter.
CEILINGS = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def delays(backoff: Backoff, count: int = len(CEILINGS)) -> list[float]:
    return [backoff.next() for _ in range(count)]


def test_without_jitter_the_delays_double_up_to_the_cap_and_start_again_after_a_reset() -> None:
    backoff = Backoff(0.1, 1.0, jitter=None)
    assert delays(backoff) == pytest.approx(CEILINGS)
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)
    assert delays(Backoff(1.0, 10.0, factor=3.0, jitter=None), 4) == [1.0, 3.0, 9.0, 10.0]


@pytest.mark.parametrize(("jitter", "floor"), [("full", 0.0), ("equal", 0.5)])
def test_jitter_draws_each_delay_below_the_exponential_one(jitter: Jitter, floor: float) -> None:
    rng = random.Random(7)
    samples = [delays(Backoff(0.1, 1.0, jitter=jitter, rng=rng)) for _ in range(2000)]
    for attempt, ceiling in enumerate(CEILINGS):
        drawn = [sample[attempt] for sample in samples]
        assert all(floor * ceiling <= delay <= ceiling for delay in drawn)
        # Spread over the whole range, evenly: uniform has its mean in the middle.
        assert min(drawn) < (floor + 0.02) * ceiling and max(drawn) > 0.98 * ceiling
        middle = (1 + floor) / 2 * ceiling
        assert statistics.mean(drawn) == pytest.approx(middle, rel=0.05)


def test_clients_failing_together_come_back_at_different_moments() -> None:
    # The default: full jitter from the random module (seeded again after a fork).
    first_retries = {Backoff().next() for _ in range(100)}
    assert len(first_retries) == 100
    assert max(first_retries) - min(first_retries) > 0.05  # of at most 0.1


@pytest.mark.parametrize(
    "arguments",
    [
        {"first": 0.0},
        {"first": -1.0},
        {"first": 2.0, "cap": 1.0},
        {"factor": 0.5},
        {"jitter": "half"},
    ],
)
def test_nonsense_is_refused(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Backoff(**arguments)  # type: ignore[arg-type]
