"""Sessions from Python: refine() answers equal an exhaustive search, say how they were obtained,
exclude seen ids, and refine_group() matches per-query searches."""

import numpy as np
import pytest

import vsr_index


def _clustered(n, d, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d))
    x = centers[np.arange(n) % 20] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _moved(q, cos, rng):
    """A unit vector at cosine `cos` from the unit vector q."""
    r = rng.standard_normal(q.shape[0])
    r -= r.dot(q) * q
    r /= np.linalg.norm(r)
    return (cos * q + np.sqrt(1 - cos * cos) * r).astype(np.float32)


def _exact_ids(x, q, k, metric, exclude=()):
    scores = -((x - q) ** 2).sum(1) if metric == "l2" else x @ q
    scores = scores.astype(np.float64)
    scores[list(exclude)] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


@pytest.fixture(scope="module")
def data():
    return _clustered(3000, 32, 0)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_refine_matches_exhaustive_search_and_reports_path(data, metric):
    index = vsr_index.FlatIndex(32, metric=metric)
    index.add(data)
    rng = np.random.default_rng(1)
    paths = set()
    for t in range(20):
        q = data[t * 7]
        s = index.session(q, k=10, pool_size=200)
        # l2 searches re-score their candidates with direct distances: counted too.
        search_cost = len(data) + (200 if metric == "l2" else 0)
        assert s.info["path"] == "search" and s.info["distances"] == search_cost
        np.testing.assert_array_equal(s.ids, _exact_ids(data, q, 10, metric))
        for cos in (0.9999, 0.999, 0.95):
            q2 = _moved(q, cos, rng)
            _scores, ids, info = s.refine(q2, 10)
            np.testing.assert_array_equal(ids, _exact_ids(data, q2, 10, metric))
            assert info["exact"] is True
            assert info["path"] in ("pool", "cold")
            # A proven answer re-scores only the pool's head; a failed proof gives up early.
            if info["path"] == "pool":
                assert 10 <= info["distances"] <= 200
            else:
                assert len(data) + 10 <= info["distances"] <= search_cost + 200
            assert (info["margin"] >= 0) == (info["path"] == "pool")
            paths.add(info["path"])
    assert paths == {"pool", "cold"}


def test_refine_scores_are_the_index_scores(data):
    index = vsr_index.FlatIndex(32, metric="cosine")
    index.add(data)
    q = data[3]
    s = index.session(q, k=5)
    q2 = _moved(q, 0.9999, np.random.default_rng(2))
    scores, ids, info = s.refine(q2)
    assert info["path"] == "pool"
    np.testing.assert_allclose(scores, data[ids] @ q2, rtol=1e-5, atol=1e-6)
    assert ids.shape == (5,)


def test_exclude_seen_never_repeats(data):
    index = vsr_index.FlatIndex(32, metric="ip")
    index.add(data)
    q = data[11]
    s = index.session(q, k=4, exclude_seen=True, pool_size=32)
    seen = set(s.ids.tolist())
    rng = np.random.default_rng(3)
    for _ in range(8):
        q2 = _moved(q, 0.999, rng)
        _, ids, _ = s.refine(q2, 4)
        np.testing.assert_array_equal(ids, _exact_ids(data, q2, 4, "ip", exclude=seen))
        assert not seen & set(ids.tolist())
        seen |= set(ids.tolist())
    assert set(s.seen.tolist()) == seen and s.turns == 9


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", ["flat", "graph"])
def test_exclude_drops_only_the_given_ids(data, metric, kind):
    if kind == "flat":
        index = vsr_index.FlatIndex(32, metric=metric)
    else:
        index = vsr_index.GraphIndex(32, metric=metric, M=12, ef_construction=100)
        index.ef_search = 200
    index.add(data)
    q = data[21]
    s = index.session(q, k=5, pool_size=64)
    shown = []
    rng = np.random.default_rng(5)
    paths = set()
    for _ in range(8):
        previous = s.ids.tolist()
        s.exclude([previous[0]])  # only the top-1 was shown
        shown.append(previous[0])
        q2 = _moved(q, 0.9995, rng)
        _, ids, info = s.refine(q2, 5)
        paths.add(info["path"])
        got = ids.tolist()
        assert not set(shown) & set(got)
        if kind == "flat":
            np.testing.assert_array_equal(ids, _exact_ids(data, q2, 5, metric, exclude=shown))
        else:  # approximate, but the exclusion is exact
            assert len(set(got) & set(_exact_ids(data, q2, 5, metric, exclude=shown).tolist())) >= 4
        assert previous[1] in got  # returned but not excluded: still eligible
    if kind == "flat":
        assert "pool" in paths  # the pool proof ran with excluded entries in the pool
    assert set(shown) <= set(s.seen.tolist())


def test_exclude_rejects_bad_ids(data):
    index = vsr_index.FlatIndex(32)
    index.add(data[:100])
    s = index.session(data[0], k=3)
    with pytest.raises(ValueError, match="non-negative"):
        s.exclude([4, -1])
    with pytest.raises(TypeError, match="integer dtype"):
        s.exclude([1.5])
    assert 4 not in s.seen.tolist()
    s.exclude(np.array([], dtype=np.int64))
    s.exclude(5)
    assert 5 in s.seen.tolist() and 5 not in s.refine(data[5], 3)[1].tolist()


def test_deny_filter_applies_to_every_turn(data):
    index = vsr_index.FlatIndex(32, metric="cosine")
    index.add(data)
    q = data[0]
    banned = _exact_ids(data, q, 3, "cosine")
    s = index.session(q, k=5, deny=banned)
    assert not set(s.ids.tolist()) & set(banned.tolist())
    _, ids, _ = s.refine(q)
    assert not set(ids.tolist()) & set(banned.tolist())


def test_refine_group_matches_individual_searches(data):
    index = vsr_index.FlatIndex(32, metric="cosine")
    index.add(data)
    rng = np.random.default_rng(4)
    q = data[42]
    refined = np.stack([_moved(q, c, rng) for c in (0.9999, 0.9999, 0.999, 0.99, 0.96, 0.92, 0.9, 0.5)])
    scores, ids, info = index.refine_group(q, refined, k=10, pool_size=300)
    assert scores.shape == ids.shape == (8, 10)
    assert info["shared_distances"] == len(data)
    assert len(info["queries"]) == 8
    for g in range(8):
        np.testing.assert_array_equal(ids[g], _exact_ids(data, refined[g], 10, "cosine"))
    assert info["queries"][0]["path"] == "pool"
    assert info["queries"][-1]["path"] == "cold"


def test_session_keeps_index_alive():
    x = _clustered(200, 8, 5)
    index = vsr_index.FlatIndex(8, metric="cosine")
    index.add(x)
    s = index.session(x[0], k=3)
    del index
    _, ids, _ = s.refine(x[0])
    assert ids[0] == 0


def test_bad_input_raises_clear_errors(data):
    index = vsr_index.FlatIndex(32, metric="cosine")
    index.add(data)
    with pytest.raises(ValueError, match="k must be positive"):
        index.session(data[0], k=0)
    with pytest.raises(ValueError, match="shape"):
        index.session(data[0][:5], k=3)
    with pytest.raises(ValueError, match="single vector"):
        index.session(data[:2], k=3)
    with pytest.raises(ValueError, match="NaN"):
        index.session(np.full(32, np.nan, dtype=np.float32), k=3)
    with pytest.raises(ValueError, match="pool_size"):
        index.session(data[0], k=3, pool_size=0)
    with pytest.raises(ValueError, match="not both"):
        index.session(data[0], k=3, allow=[1], deny=[2])
    with pytest.raises(TypeError, match="integer"):
        index.session(data[0], k=3, deny=[1.5])
    s = index.session(data[0], k=3)
    with pytest.raises(ValueError, match="NaN"):
        s.refine(np.full(32, np.inf, dtype=np.float32))
    assert s.turns == 1
    with pytest.raises(ValueError, match="shape"):
        index.refine_group(data[0], data[:3, :5], k=3)


@pytest.mark.parametrize("kind", ["flat", "graph"])
def test_k_beyond_the_index_and_negative_threads_raise_like_search(data, kind):
    index = vsr_index.FlatIndex(32) if kind == "flat" else vsr_index.GraphIndex(32)
    index.add(data[:6])
    with pytest.raises(ValueError, match="exceeds the 6 vectors"):
        index.search(data[0], 7)
    with pytest.raises(ValueError, match="exceeds the 6 vectors"):
        index.session(data[0], k=7)
    s = index.session(data[0], k=6)
    with pytest.raises(ValueError, match="exceeds the 6 vectors"):
        s.refine(data[1], k=7)
    assert s.turns == 1
    with pytest.raises(ValueError, match="exceeds the 6 vectors"):
        index.refine_group(data[0], data[1:3], k=7)
    with pytest.raises(ValueError, match="num_threads"):
        index.session(data[0], k=3, num_threads=-7)
    with pytest.raises(ValueError, match="num_threads"):
        index.refine_group(data[0], data[1:3], k=3, num_threads=-7)
    # With a filter, fewer matches than k are padded, as search pads them.
    _, ids = index.search(data[0], 4, allow=[0, 1])
    assert ids[0].tolist()[2:] == [-1, -1]
    assert index.session(data[0], k=4, allow=[0, 1]).ids.tolist()[2:] == [-1, -1]
