"""GraphIndex from Python: recall against numpy, removal, filters, persistence, sessions, errors."""

import numpy as np
import pytest
from thread_harness import run_concurrently

import vsr_index


def _clustered(n, d, seed, centers_seed=0):
    centers = np.random.default_rng(centers_seed).standard_normal((40, d))
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(ids, base, queries, k, allowed=None):
    scores = queries @ base.T
    if allowed is not None:
        mask = np.full(len(base), -np.inf)
        mask[allowed] = 0
        scores = scores + mask
    truth = np.argsort(-scores, axis=1)[:, :k]
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth, strict=True)])


@pytest.fixture(scope="module")
def data():
    return _clustered(4000, 32, 1), _clustered(100, 32, 2)


@pytest.fixture(scope="module")
def graph(data):
    base, _ = data
    index = vsr_index.GraphIndex(32, metric="cosine", storage="int8", M=12, ef_construction=100)
    index.num_threads = 2
    index.add(base)
    return index


def test_recall_and_exact_scores(graph, data):
    base, queries = data
    scores, ids = graph.search(queries, 10)
    assert _recall(ids, base, queries, 10) >= 0.97
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, ids, 1), rtol=1e-5, atol=1e-6)
    assert graph.kind == "graph" and graph.storage == "int8" and graph.M == 12 and len(graph) == 4000


def test_ef_search_trades_recall(graph, data):
    base, queries = data
    graph.ef_search = 10
    low = _recall(graph.search(queries, 10)[1], base, queries, 10)
    graph.ef_search = 128
    high = _recall(graph.search(queries, 10)[1], base, queries, 10)
    graph.ef_search = 64
    assert high >= low and high >= 0.98


def test_restrictive_allow_list_keeps_recall(graph, data):
    base, queries = data
    allowed = np.arange(0, 4000, 97)
    _, ids = graph.search(queries, 10, allow=allowed)
    assert set(ids.ravel().tolist()) <= set(allowed.tolist())
    assert _recall(ids, base, queries, 10, allowed) == 1.0  # exact scan of the allowed rows


def test_remove_keeps_recall(data):
    base, queries = data
    index = vsr_index.GraphIndex(32, metric="ip", M=12, ef_construction=100)
    index.add(base)
    gone = np.arange(0, 4000, 3)
    assert index.remove(gone) == len(gone)
    _, ids = index.search(queries, 10)
    assert not set(ids.ravel().tolist()) & set(gone.tolist())
    keep = np.setdiff1d(np.arange(4000), gone)
    assert _recall(ids, base, queries, 10, keep) >= 0.95
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([0])


def test_save_load_mmap_round_trip(graph, data, tmp_path):
    _, queries = data
    path = tmp_path / "g.vsr"
    graph.save(path)
    assert vsr_index.index_kind(path) == "graph"
    loaded = vsr_index.load(path)
    assert isinstance(loaded, vsr_index.GraphIndex) and loaded.is_mapped
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], graph.search(queries, 10)[1])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        vsr_index.GraphIndex.load(path)


def test_warm_ef_search_setting(graph, data):
    base, queries = data
    assert graph.warm_ef_search is None
    q = queries[0]
    # A move (cosine about 0.95) the pool cannot prove but close enough for a warm start.
    refined = q + 0.05 * np.random.default_rng(3).standard_normal(q.shape).astype(np.float32)
    wide = graph.session(q, 10, pool_size=64).refine(refined)
    graph.warm_ef_search = 10
    try:
        assert graph.warm_ef_search == 10
        narrow = graph.session(q, 10, pool_size=64).refine(refined)
        assert wide[2]["path"] == narrow[2]["path"] == "warm"
        assert narrow[2]["distances"] < wide[2]["distances"]
        assert _recall(narrow[1][None], base, refined[None], 10) >= 0.9
        for bad in (0, -3):
            with pytest.raises(ValueError, match="warm_ef_search"):
                graph.warm_ef_search = bad
        with pytest.raises(TypeError, match="warm_ef_search"):
            graph.warm_ef_search = "wide"
        assert graph.warm_ef_search == 10
    finally:
        graph.warm_ef_search = None
    assert graph.warm_ef_search is None


def test_session_on_graph_reports_paths(graph, data):
    base, _ = data
    rng = np.random.default_rng(3)
    paths = []
    for t in range(10):
        q = base[t * 31]
        s = graph.session(q, 10, pool_size=64)
        assert s.info["path"] == "search" and s.info["exact"] is False
        for noise in (0.01, 0.3, 3.0):
            q2 = (q + noise * rng.standard_normal(32) / np.sqrt(32)).astype(np.float32)
            _, ids, info = s.refine(q2)
            paths.append(info["path"])
            assert info["distances"] > 0
            assert _recall(ids[None], base, q2[None] / np.linalg.norm(q2), 10) >= 0.8
    assert {"pool", "warm", "cold"} <= set(paths)
    _, ids, info = graph.refine_group(base[0], np.stack([base[0], base[1]]), 5)
    assert ids[0, 0] == 0 and ids[1, 0] == 1


def test_bad_parameters_raise(data):
    with pytest.raises(ValueError, match="M must be"):
        vsr_index.GraphIndex(8, M=1)
    with pytest.raises(ValueError, match="ef_search"):
        vsr_index.GraphIndex(8, ef_search=0)
    with pytest.raises(ValueError, match="unknown metric"):
        vsr_index.GraphIndex(8, metric="hamming")
    with pytest.raises(ValueError, match="unknown storage"):
        vsr_index.GraphIndex(8, storage="int4")
    index = vsr_index.GraphIndex(8, metric="cosine")
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((2, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        index.add(np.ones((2, 7), dtype=np.float32))
    assert len(index) == 0
    index.add(np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError, match="exceeds"):
        index.search(np.eye(8, dtype=np.float32), 9)
    with pytest.raises(ValueError, match="ef_search"):
        index.ef_search = 0


def test_concurrent_search_and_sessions_with_add_and_remove():
    """Python threads (the GIL is released) search, warm-start sessions and re-score while another
    thread adds and removes vectors; every result is a live vector with its exact score."""
    dim, n_base = 24, 1500
    base = _clustered(n_base, dim, 11)
    extra = _clustered(400, dim, 12)
    index = vsr_index.GraphIndex(dim, metric="ip", storage="int8", M=8, ef_construction=64)
    index.num_threads = 2
    index.add(base)
    vectors = {i: base[i] for i in range(n_base)} | {100_000 + i: extra[i] for i in range(len(extra))}
    queries = _clustered(6, dim, 13)

    def check(q: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
        assert (ids >= 0).all(), "missing result"
        expect = np.array([vectors[int(i)] @ q for i in ids])
        np.testing.assert_allclose(scores, expect, atol=1e-4)

    def reader(rng: np.random.Generator) -> None:
        scores, ids = index.search(queries, 10, num_threads=2)
        for q, s, i in zip(queries, scores, ids, strict=True):
            check(q, s, i)
        q = queries[rng.integers(len(queries))]
        s = index.session(q, 10, pool_size=32, exclude_seen=True)
        first = set(s.ids.tolist())
        q2 = (q + 0.05 * rng.standard_normal(dim)).astype(np.float32)
        scores2, ids2, _ = s.refine(q2)
        check(q2, scores2, ids2)
        assert not first & set(ids2.tolist()), "exclude_seen returned a seen id"

    def writer() -> None:
        for rnd in range(20):
            new = np.arange(100_000 + rnd * 20, 100_000 + rnd * 20 + 20)
            index.add(extra[new - 100_000], ids=new)
            if rnd % 2:
                index.remove(new[:10])

    run_concurrently(reader, 3, writer)
    assert len(index) == n_base + 20 * 20 - 10 * 10
    live = np.array(
        sorted(set(range(n_base)) | {100_000 + i for i in range(400) if (i // 20) % 2 == 0 or i % 20 >= 10})
    )
    live_vectors = np.stack([vectors[int(i)] for i in live])
    _, ids = index.search(queries, 10)
    truth = live[np.argsort(-(queries @ live_vectors.T), axis=1)[:, :10]]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]) >= 0.95
