"""Stress: several threads search (plain, filtered, range), run sessions and group refinements and
read rows back while one thread adds, removes and saves, phase after phase. Every answer given
during the churn is checked against what must hold whatever the interleaving (live ids, exact
scores, filters obeyed, no id returned twice in a session, the file a save wrote holds the ids
live at that moment); after each phase, with the writer stopped, the index is compared with an
exact numpy reference. Any exception on any thread fails the test (thread_harness)."""

from __future__ import annotations

import numpy as np
import pytest
from thread_harness import run_concurrently

import vsr_index

pytestmark = pytest.mark.slow

DIM = 16
BASE = 1500  # ids 0..BASE-1 are never removed: filters over them have a fixed exact answer
K = 8


def vector_of(ids) -> np.ndarray:
    """Each id's vector is a fixed function of the id, so any thread can check any result."""
    ids = np.asarray(ids, dtype=np.float64).reshape(-1)
    x = np.sin(0.731 * ids[:, None] + 1.37 * np.arange(DIM)[None, :]) + 0.3 * np.cos(
        0.113 * ids[:, None] * (np.arange(DIM)[None, :] + 1)
    )
    return x.astype(np.float32)


def make_index(kind: str):
    if kind == "flat-f32":
        return vsr_index.FlatIndex(DIM, metric="ip")
    if kind == "flat-int8-rerank":
        return vsr_index.FlatIndex(DIM, metric="ip", storage="int8", rerank=4)
    index = vsr_index.GraphIndex(DIM, metric="ip", storage="int8", M=8, ef_construction=48, ef_search=48)
    index.num_threads = 2
    return index


def exact_top(live: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vector_of(live).astype(np.float64) @ q.astype(np.float64)
    order = np.argsort(-scores, kind="stable")[:k]
    return scores[order], live[order]


def check_results(q: np.ndarray, scores: np.ndarray, ids: np.ndarray, allowed=None) -> None:
    """Holds for any answer given while the index changes: real ids, once each, best first, each
    with its exact score (float32 rows or exact re-rank), inside the filter when there is one."""
    found = ids[ids >= 0]
    assert len(set(found.tolist())) == len(found), f"an id returned twice: {ids}"
    expect = vector_of(found).astype(np.float64) @ q.astype(np.float64)
    np.testing.assert_allclose(scores[: len(found)], expect, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores[: len(found)]) <= 1e-5), "not best first"
    if allowed is not None:
        assert set(found.tolist()) <= allowed, "a filtered search returned an id outside its allow-list"


@pytest.mark.parametrize("kind", ["flat-f32", "flat-int8-rerank", "graph-int8"])
def test_concurrent_writes_reads_sessions_and_saves_keep_every_invariant(kind, tmp_path):
    index = make_index(kind)
    index.add(vector_of(np.arange(BASE)), ids=np.arange(BASE))
    live = set(range(BASE))
    exact = kind == "flat-f32"
    queries = vector_of(np.arange(10**6, 10**6 + 32))
    allow = np.arange(0, BASE, 7)
    allow_set = set(allow.tolist())
    next_auto = [BASE]  # automatic ids continue after the largest id, one by one
    saves: list[tuple[str, set[int]]] = []

    def reader(rng: np.random.Generator) -> None:
        q = queries[rng.integers(len(queries))]
        scores, ids = index.search(q, K)
        assert (ids >= 0).all()
        check_results(q, scores[0], ids[0])
        # Base ids are never removed, so a search restricted to them has one exact answer.
        scores, ids = index.search(q, K, allow=allow)
        check_results(q, scores[0], ids[0], allow_set)
        if exact:
            _, want_ids = exact_top(allow, q, K)
            np.testing.assert_array_equal(ids[0], want_ids)
        scores, ids = index.search(q, K, deny=allow)
        check_results(q, scores[0], ids[0])
        assert not set(ids[0].tolist()) & allow_set
        # A session over the churn: every turn valid, nothing returned twice.
        session = index.session(q, K, pool_size=48, exclude_seen=True)
        check_results(q, session.scores, session.ids)
        seen = set(session.ids.tolist())
        for step in range(3):
            q2 = (q + (0.02 + 0.05 * step) * rng.standard_normal(DIM)).astype(np.float32)
            s2, i2, _ = session.refine(q2)
            check_results(q2, s2, i2)
            assert not seen & set(i2[i2 >= 0].tolist()), "a session returned an id twice"
            seen |= set(i2.tolist())
        # A GRPO-style group sharing one pool.
        group = (q[None, :] + 0.03 * rng.standard_normal((4, DIM))).astype(np.float32)
        gs, gi, _ = index.refine_group(q, group, K, pool_size=64)
        for j in range(len(group)):
            assert (gi[j] >= 0).all()
            check_results(group[j], gs[j], gi[j])
        pick = rng.integers(0, BASE, 16)
        np.testing.assert_allclose(index.reconstruct(pick), vector_of(pick), rtol=1e-6, atol=1e-6)

    def writer_for(phase: int):
        def writer() -> None:
            rng = np.random.default_rng(1000 + phase)
            for rnd in range(300):
                if rnd % 3 == 0:
                    # Automatic ids: the next ones after the largest id so far.
                    new = np.arange(next_auto[0], next_auto[0] + 6)
                    index.add(vector_of(new))
                else:
                    new = np.arange(next_auto[0], next_auto[0] + 6)
                    index.add(vector_of(new), ids=new)
                next_auto[0] += 6
                live.update(new.tolist())
                removable = sorted(live - set(range(BASE)))
                gone = rng.choice(removable, size=min(4, len(removable)), replace=False)
                index.remove(gone)
                live.difference_update(gone.tolist())
                if rnd % 97 == 0:
                    path = tmp_path / f"{kind}-{phase}-{rnd}.vsr"
                    index.save(path)
                    saves.append((str(path), set(live)))

        return writer

    for phase in range(4):
        rounds = run_concurrently(reader, 3, writer_for(phase), min_rounds=3)
        assert rounds >= 9
        # Quiescent: the index equals the reference exactly.
        ids = np.array(sorted(live))
        assert len(index) == len(ids)
        np.testing.assert_allclose(index.reconstruct(ids), vector_of(ids), rtol=1e-6, atol=1e-6)
        with pytest.raises(KeyError):
            index.reconstruct([next_auto[0]])
        scores, found = index.search(queries, K)
        hits = 0
        for q, s, f in zip(queries, scores, found, strict=True):
            want_scores, want_ids = exact_top(ids, q, K)
            check_results(q, s, f)
            hits += len(set(f.tolist()) & set(want_ids.tolist()))
            if exact:
                np.testing.assert_allclose(s, want_scores, rtol=1e-4, atol=1e-4)
        assert hits / (len(queries) * K) >= (1.0 if exact else 0.9)
    # Every file saved during the churn holds exactly the ids live when it was saved, and loads
    # (mapped and read) into an index that answers like the reference.
    assert len(saves) >= 6
    for path, ids_then in saves:
        for mmap in (True, False):
            loaded = vsr_index.load(path, mmap=mmap)
            assert len(loaded) == len(ids_then)
            then = np.array(sorted(ids_then))
            np.testing.assert_allclose(loaded.reconstruct(then), vector_of(then), rtol=1e-6, atol=1e-6)
    # Automatic ids continue after the largest id.
    index.add(vector_of([next_auto[0]]))
    np.testing.assert_allclose(
        index.reconstruct([next_auto[0]]), vector_of([next_auto[0]]), rtol=1e-6, atol=1e-6
    )
