"""Running a test's reader and writer functions on threads at once, shared by the concurrency tests."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_concurrently(reader: Callable[[int], None], readers: int, other: Callable[[], None]) -> None:
    """`readers` threads of `reader(seed)` alongside one thread of `other`; returns when all have ended."""
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(readers)]
    threads.append(threading.Thread(target=other))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
