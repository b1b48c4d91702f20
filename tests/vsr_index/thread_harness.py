"""Running a test's readers and one writer on threads at once, shared by the concurrency tests.

Every exception raised on any thread fails the test: it is re-raised in the test's own thread once
all threads have stopped (the first one, with a note saying how many threads failed), so an
assertion inside a reader or the writer counts exactly like one in the test body.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np


def run_concurrently(
    reader: Callable[[np.random.Generator], None],
    readers: int,
    writer: Callable[[], None],
    min_rounds: int = 1,
) -> int:
    """Run `writer()` once on one thread while `readers` threads call `reader(rng)` round after round
    (each thread its own seeded generator) until the writer has returned, each reader at least
    `min_rounds` times. The first failure on any thread stops the readers after their current round
    and is raised here once every thread has ended. Returns the number of reader rounds run."""
    done = threading.Event()
    lock = threading.Lock()
    failures: list[tuple[str, BaseException]] = []
    rounds = [0]

    def record(name: str, exc: BaseException) -> None:
        with lock:
            failures.append((name, exc))
        done.set()

    def read(seed: int) -> None:
        rng = np.random.default_rng(seed)
        count = 0
        try:
            while count < min_rounds or not done.is_set():
                if failures:
                    break
                reader(rng)
                count += 1
        except BaseException as exc:  # every failure is re-raised in the test thread
            record(f"reader {seed}", exc)
        with lock:
            rounds[0] += count

    def write() -> None:
        try:
            writer()
        except BaseException as exc:  # re-raised in the test thread
            record("writer", exc)
        done.set()

    threads = [threading.Thread(target=read, args=(s,), name=f"reader-{s}") for s in range(readers)]
    threads.append(threading.Thread(target=write, name="writer"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        name, first = failures[0]
        if hasattr(first, "add_note"):
            first.add_note(f"raised on the {name} thread; {len(failures)} thread(s) failed in all")
        raise first
    return rounds[0]
