"""The concurrency harness fails a test for an exception on any of its threads."""

import threading

import numpy as np
import pytest
from thread_harness import run_concurrently


def test_a_reader_exception_fails_the_test():
    def reader(rng: np.random.Generator) -> None:
        raise KeyError("id 7 is not in the index")

    with pytest.raises(KeyError, match="id 7"):
        run_concurrently(reader, 3, lambda: None)


def test_a_writer_exception_fails_the_test_and_stops_the_readers():
    def writer() -> None:
        raise RuntimeError("add failed")

    # Without the writer's failure ending them, these readers would never stop.
    with pytest.raises(RuntimeError, match="add failed"):
        run_concurrently(lambda rng: None, 2, writer)


def test_readers_run_until_the_writer_is_done_and_at_least_min_rounds():
    release = threading.Event()
    seen = []

    def reader(rng: np.random.Generator) -> None:
        seen.append(1)
        if len(seen) >= 30:
            release.set()

    rounds = run_concurrently(reader, 2, release.wait, min_rounds=5)
    assert rounds == len(seen) >= 30
