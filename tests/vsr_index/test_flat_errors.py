"""Bad input raises a clear Python exception naming the problem, and changes nothing."""

import numpy as np
import pytest

import vsr_index


def test_constructor_arguments():
    with pytest.raises(ValueError, match="dim must be positive"):
        vsr_index.FlatIndex(0)
    with pytest.raises(ValueError, match="unknown metric 'hamming'"):
        vsr_index.FlatIndex(8, metric="hamming")
    with pytest.raises(ValueError, match="unknown storage 'int4'"):
        vsr_index.FlatIndex(8, storage="int4")
    with pytest.raises(ValueError, match="rerank needs a compressed storage"):
        vsr_index.FlatIndex(8, storage="f32", rerank=4)
    with pytest.raises(TypeError, match="rerank must be an int"):
        vsr_index.FlatIndex(8, storage="int8", rerank=True)
    with pytest.raises(ValueError, match="rerank must be >= 0"):
        vsr_index.FlatIndex(8, storage="int8", rerank=-1)


def test_add_rejects_and_keeps_index_unchanged():
    index = vsr_index.FlatIndex(8, metric="cosine", storage="f16")
    index.add(np.ones((2, 8), dtype=np.float32), ids=[5, 6])
    bad = [
        (np.zeros((3, 7), dtype=np.float32), None, ValueError, r"shape \(n, 8\), got \(3, 7\)"),
        (np.zeros((2, 2, 8), dtype=np.float32), None, ValueError, "shape"),
        (np.array([["a"] * 8]), None, TypeError, "numeric dtype"),
        (np.ones((1, 8), dtype=np.complex64), None, TypeError, "numeric dtype"),
        (np.full((1, 8), np.nan, dtype=np.float32), None, ValueError, "vector 0 contains NaN"),
        (np.full((1, 8), np.inf, dtype=np.float32), None, ValueError, "NaN or infinity"),
        (np.zeros((1, 8), dtype=np.float32), None, ValueError, "all zeros"),
        (np.ones((1, 8), dtype=np.float32), [5], ValueError, "duplicate id 5"),
        (np.ones((2, 8), dtype=np.float32), [7, 7], ValueError, "duplicate id 7"),
        (np.ones((1, 8), dtype=np.float32), [-1], ValueError, "non-negative"),
        (np.ones((1, 8), dtype=np.float32), [1.5], TypeError, "integer dtype"),
        (np.ones((2, 8), dtype=np.float32), [1], ValueError, r"shape \(2,\)"),
        ("not an array", None, TypeError, "numeric"),
    ]
    for vectors, ids, exc, match in bad:
        with pytest.raises(exc, match=match):
            index.add(vectors, ids=ids)
    assert len(index) == 2
    ip16 = vsr_index.FlatIndex(8, storage="f16")
    with pytest.raises(ValueError, match="does not fit float16"):
        ip16.add(np.full((1, 8), 1e6, dtype=np.float32))
    assert len(ip16) == 0


def test_search_arguments():
    index = vsr_index.FlatIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    q = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(q, 0)
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(q, -3)
    with pytest.raises(ValueError, match="k = 5 exceeds the 4 vectors"):
        index.search(q, 5)
    with pytest.raises(ValueError, match="query 1 contains NaN"):
        index.search(np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0]], dtype=np.float32), 1)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.search(np.ones(5, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="num_threads"):
        index.search(q, 1, num_threads=-2)
    with pytest.raises(TypeError, match="integer dtype"):
        index.search(q, 1, allow=[0.5])
    with pytest.raises(ValueError, match="radius must be finite"):
        index.range_search(q, float("nan"))
    with pytest.raises(ValueError, match="one query"):
        index.score_ids(np.ones((2, 4), dtype=np.float32), [0])
    with pytest.raises(ValueError, match="listed twice"):
        index.remove([1, 1])
    assert len(index) == 4
    with pytest.raises(ValueError, match="not available"):
        vsr_index.set_isa("neon" if "neon" not in vsr_index.simd_info()["available"] else "avx512")
