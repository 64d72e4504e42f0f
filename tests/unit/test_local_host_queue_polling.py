"""Queue polling back-off (WebJobs RandomizedExponentialBackoffStrategy) and poison queue names."""

from __future__ import annotations

import random

import pytest

from local_host.polling_backoff import RandomizedExponentialBackoff
from local_host.queue_listener import poison_queue_name


def test_backoff_grows_by_randomized_doubling_increments_up_to_the_maximum() -> None:
    backoff = RandomizedExponentialBackoff(0.1, 2.0, random.Random(7))
    delays = [backoff.next_delay(succeeded=False) for _ in range(10)]
    assert delays[0] == pytest.approx(0.1)  # first empty poll after start: the minimum
    for index, delay in enumerate(delays[1:5], start=1):  # minimum + 2^(k-1) * minimum, +-20 %
        increment = 2 ** (index - 1) * 0.1
        assert 0.1 + 0.8 * increment <= delay <= 0.1 + 1.2 * increment, (index, delays)
    assert delays[-3:] == [2.0, 2.0, 2.0]  # the maximum itself is not randomized
    assert backoff.next_delay(succeeded=True) == pytest.approx(0.1)
    assert 0.18 <= backoff.next_delay(succeeded=False) <= 0.22  # after a batch: minimum + ~1 minimum


def test_backoff_is_randomized() -> None:
    sequences = set()
    for seed in range(5):
        backoff = RandomizedExponentialBackoff(0.1, 60.0, random.Random(seed))
        sequences.add(tuple(round(backoff.next_delay(succeeded=False), 6) for _ in range(6)))
    assert len(sequences) == 5


def test_poison_queue_names() -> None:
    assert poison_queue_name("jobs") == "jobs-poison"
    assert poison_queue_name("jobs-poison") is None  # a poison queue has no poison queue
    assert poison_queue_name("a" * 56) == "a" * 56 + "-poison"  # 63 characters: still a valid name
    assert poison_queue_name("a" * 57) is None  # the name would be too long
