"""services/stac/item_formatting: gc_paused (nestable across threads, restores the collector's state)
and preparing_items (one chunk at a time per process)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from services.stac.item_formatting import gc_paused, preparing_items


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_inside_and_on_again_after_the_last_of_overlapping_pauses() -> None:
    entered, release = threading.Event(), threading.Event()

    def other_task() -> None:
        with gc_paused():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other_task)
    with gc_paused():
        assert not gc.isenabled()
        thread.start()
        assert entered.wait(5)
    assert not gc.isenabled()  # the other thread's pause still runs
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off_and_an_error_still_ends_the_pause() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_one_chunk_is_prepared_at_a_time_per_process_with_the_collector_paused() -> None:
    inside, overlaps = [0], [0]
    lock = threading.Lock()

    def prepare() -> None:
        with preparing_items():
            assert not gc.isenabled()
            with lock:
                inside[0] += 1
                overlaps[0] = max(overlaps[0], inside[0])
            threading.Event().wait(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert overlaps[0] == 1
    assert gc.isenabled()
