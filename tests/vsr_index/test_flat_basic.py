"""FlatIndex: exact results against a numpy reference, and clear errors on bad input."""

import numpy as np
import pytest

import vsr_index


def _reference(base, queries, metric, k):
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = queries @ base.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_search_matches_numpy(metric):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((17, 24)).astype(np.float32)
    index = vsr_index.FlatIndex(24, metric=metric)
    ids = np.arange(500, dtype=np.int64) * 2 + 100
    index.add(base, ids=ids)
    assert len(index) == 500
    scores, got = index.search(queries, k=5)
    ref_scores, ref_order = _reference(base.astype(np.float64), queries.astype(np.float64), metric, 5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got, ids[ref_order])


def test_every_available_isa_gives_same_answer():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 50)).astype(np.float32)
    queries = rng.standard_normal((9, 50)).astype(np.float32)
    info = vsr_index.simd_info()
    assert "scalar" in info["available"] and info["selected"] in info["available"]
    results = {}
    for isa in info["available"]:
        index = vsr_index.FlatIndex(50, metric="ip")
        index.set_isa(isa)
        assert index.isa == isa
        index.add(base)
        results[isa] = index.search(queries, 4)
    ref_scores, ref_ids = results["scalar"]
    for scores, ids in results.values():
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ids, ref_ids)


def test_bad_input_raises_clear_errors():
    index = vsr_index.FlatIndex(8)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        index.add(np.zeros((3, 7), dtype=np.float32))
    with pytest.raises(TypeError, match="numeric dtype"):
        index.add(np.array([["a"] * 8]))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown metric"):
        vsr_index.FlatIndex(8, metric="hamming")
    index.add(np.ones((2, 8), dtype=np.float64), ids=[5, 6])  # float64 is converted
    with pytest.raises(ValueError, match="duplicate id 5"):
        index.add(np.ones((1, 8), dtype=np.float32), ids=[5])
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(np.ones(8, dtype=np.float32), 0)
    assert len(index) == 2
