"""Concurrent searches from Python threads (the GIL is released) stay correct while other threads
add and remove vectors."""

import numpy as np
from thread_harness import run_concurrently

import vsr_index


def _vectors(ids: np.ndarray, dim: int) -> np.ndarray:
    """The vector of an id is a fixed function of it, so results can be checked without locks."""
    return np.sin(0.37 * ids[:, None].astype(np.float64) + 1.3 * np.arange(dim)[None, :]).astype(np.float32)


def test_concurrent_search_with_add_and_remove():
    dim, base = 24, 500
    index = vsr_index.FlatIndex(dim, metric="ip", storage="bf16", rerank=4)
    base_ids = np.arange(base)
    index.add(_vectors(base_ids, dim), ids=base_ids)
    queries = _vectors(np.array([10_001, 10_002, 10_003]), dim)

    def reader(rng: np.random.Generator) -> None:
        scores, ids = index.search(queries, 10, num_threads=2)
        assert (ids >= 0).all(), "missing result"
        # Re-ranked scores are exact: each equals the dot product with that id's vector.
        expect = np.einsum(
            "qd,qkd->qk", queries.astype(np.float64), _vectors(ids.ravel(), dim).reshape(3, 10, dim)
        )
        np.testing.assert_allclose(scores, expect, atol=1e-4)
        keep = rng.choice(base_ids, 5, replace=False)
        _, allowed = index.search(queries[0], 5, allow=keep)
        assert set(allowed[0]) == set(keep), "allow-list broken"

    def writer() -> None:
        for rnd in range(40):
            new = np.arange(100_000 + rnd * 10, 100_000 + rnd * 10 + 10)
            index.add(_vectors(new, dim), ids=new)
            if rnd % 2:
                index.remove(new[:5])

    run_concurrently(reader, 3, writer)
    assert len(index) == base + 40 * 10 - 20 * 5
