"""FlatIndex search against a numpy reference: metrics, storages, re-rank, filters, range search,
remove, thread counts and every kernel path available on this CPU."""

import numpy as np
import pytest
from flat_reference import assert_same_topk, scores, topk

import vsr_index

METRICS = ["ip", "cosine", "l2"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2000, 40)).astype(np.float32), rng.standard_normal((30, 40)).astype(
        np.float32
    )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("isa", vsr_index.simd_info()["available"])
def test_f32_exact_on_every_isa(data, metric, isa):
    base, queries = data
    index = vsr_index.FlatIndex(40, metric=metric)
    index.set_isa(isa)
    index.add(base)
    all_scores = scores(base, queries, metric)
    ref_s, ref_i = topk(base, queries, metric, 10)
    for threads in (1, 2):
        got_s, got_i = index.search(queries, 10, num_threads=threads)
        assert got_s.dtype == np.float32 and got_i.dtype == np.int64 and got_s.shape == (30, 10)
        assert_same_topk(got_s, got_i, ref_s, ref_i, all_scores, metric)
        # Single-query calls take the streaming path and agree with the batch.
        _one_s, one_i = index.search(queries[3], 10, num_threads=threads)
        np.testing.assert_array_equal(one_i[0], got_i[3])


@pytest.mark.parametrize("storage", ["f16", "bf16", "int8"])
@pytest.mark.parametrize("rerank", [0, 4])
@pytest.mark.parametrize("isa", vsr_index.simd_info()["available"])
def test_compressed_single_query_scan_agrees_with_scalar_on_every_isa(storage, rerank, isa):
    """The single-query scan (vpdpwssd for int8 on avx512vnni, vdpbf16ps for bf16 on avx512bf16,
    float widening elsewhere) ranks the stored rows like the scalar path, scores included."""
    rng = np.random.default_rng(7)
    d = 100  # not a multiple of 32: every kernel's tail is used
    base = rng.standard_normal((3000, d)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = rng.standard_normal((6, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    indexes = {}
    for which in ("scalar", isa):
        index = vsr_index.FlatIndex(d, metric="ip", storage=storage, rerank=rerank)
        index.set_isa(which)
        assert index.isa == which
        index.add(base)
        indexes[which] = index
    ref, got = indexes["scalar"], indexes[isa]
    ids = np.arange(len(base), dtype=np.int64)
    for qi, q in enumerate(queries):
        ref_s, ref_i = ref.search(q, 10, num_threads=1)
        got_s, got_i = got.search(q, 10, num_threads=1)
        # Scores of every stored row by the scalar path: the reference for near ties.
        all_scores = ref.score_ids(q, ids)[None, :]
        assert_same_topk(got_s, got_i, ref_s, ref_i, all_scores, "ip", atol=2e-4)
        # Three queries at once also take the single-query scan (fewer than a register tile).
        batch_s, batch_i = got.search(queries[:3], 10, num_threads=1)
        if qi < 3:
            np.testing.assert_allclose(batch_s[qi], got_s[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(batch_i[qi], got_i[0])


def test_process_wide_isa_setting_applies_to_new_indexes(data):
    base, queries = data
    try:
        vsr_index.set_isa("scalar")
        assert vsr_index.simd_info()["selected"] == "scalar"
        index = vsr_index.FlatIndex(40)
        assert index.isa == "scalar"
        index.add(base)
        ref = vsr_index.FlatIndex(40)
        with pytest.raises(ValueError, match="unknown ISA"):
            vsr_index.set_isa("sse9")
    finally:
        vsr_index.set_isa(None)
    assert vsr_index.simd_info()["selected"] == vsr_index.simd_info()["best"]
    ref.add(base)
    np.testing.assert_array_equal(index.search(queries, 5)[1], ref.search(queries, 5)[1])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", ["f16", "bf16", "int8"])
def test_compressed_storage_with_rerank_reports_exact_scores(data, metric, storage):
    base, queries = data
    index = vsr_index.FlatIndex(40, metric=metric, storage=storage, rerank=8)
    assert index.storage == storage and index.rerank == 8
    index.add(base)
    got_s, got_i = index.search(queries, 10)
    all_scores = scores(base, queries, metric)
    _ref_s, ref_i = topk(base, queries, metric, 10)
    exact_of_returned = np.take_along_axis(all_scores, got_i, axis=1)
    np.testing.assert_allclose(got_s, exact_of_returned, rtol=1e-4, atol=1e-4)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got_i, ref_i, strict=True)])
    assert recall >= 0.97
    plain = vsr_index.FlatIndex(40, metric=metric, storage=storage)
    plain.add(base)
    p_s, p_i = plain.search(queries, 10)
    # Without re-rank, scores are those of the stored form: close to exact, not equal.
    np.testing.assert_allclose(p_s, np.take_along_axis(all_scores, p_i, axis=1), rtol=0.05, atol=0.05)


def test_allow_and_deny_lists(data):
    base, queries = data
    ids = np.arange(2000, dtype=np.int64) * 5 + 7
    index = vsr_index.FlatIndex(40, metric="ip")
    index.add(base, ids=ids)
    all_scores = scores(base, queries, "ip")
    for allowed_rows in (np.arange(0, 2000, 400), np.arange(0, 2000, 2)):  # gathered and scanned paths
        s, got = index.search(queries, 3, allow=ids[allowed_rows])
        sub = all_scores[:, allowed_rows]
        expect = ids[allowed_rows][np.argsort(-sub, axis=1, kind="stable")[:, :3]]
        np.testing.assert_array_equal(got, expect)
    _top_s, top_i = index.search(queries, 5)
    _, denied = index.search(queries, 3, deny=top_i[:, :2].ravel())
    for qi in range(len(queries)):
        assert not np.isin(denied[qi], top_i[:, :2]).any()
    # An allow-list smaller than k pads with id -1 (and -inf scores for ip).
    s, got = index.search(queries[:1], 4, allow=ids[:2])
    assert set(got[0, :2]) == set(ids[:2]) and (got[0, 2:] == -1).all() and np.isneginf(s[0, 2:]).all()
    with pytest.raises(ValueError, match="not both"):
        index.search(queries, 3, allow=[1], deny=[2])


@pytest.mark.parametrize("metric", METRICS)
def test_range_search(data, metric):
    base, queries = data
    index = vsr_index.FlatIndex(40, metric=metric)
    index.add(base)
    all_scores = scores(base, queries, metric)
    radius = float(np.quantile(all_scores, 0.01 if metric == "l2" else 0.99))
    lims, s, ids = index.range_search(queries, radius)
    assert lims.shape == (31,) and lims[0] == 0 and lims[-1] == len(ids) == len(s) > 0
    for qi in range(len(queries)):
        row = all_scores[qi]
        expect = np.flatnonzero(row <= radius if metric == "l2" else row >= radius)
        got = ids[lims[qi] : lims[qi + 1]]
        assert set(got) == set(expect)
        np.testing.assert_allclose(s[lims[qi] : lims[qi + 1]], row[got], rtol=1e-4, atol=1e-4)
        ordered = s[lims[qi] : lims[qi + 1]]
        assert (np.diff(ordered) >= 0).all() if metric == "l2" else (np.diff(ordered) <= 0).all()


def test_remove_really_removes(data):
    base, queries = data
    index = vsr_index.FlatIndex(40, metric="l2", storage="int8", rerank=4)
    index.add(base)
    gone = np.arange(0, 2000, 3)
    assert index.remove(gone) == len(gone)
    assert len(index) == 2000 - len(gone)
    keep = np.setdiff1d(np.arange(2000), gone)
    _s, got = index.search(queries, len(keep))
    assert not np.isin(got, gone).any()
    assert set(got[0]) == set(keep)
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([gone[0]])
    with pytest.raises(KeyError, match="not in the index"):
        index.score_ids(queries[0], [gone[0]])
    index.add(base[:1], ids=[0])  # a removed id can come back
    assert index.score_ids(queries[0], [0]).shape == (1,)
    assert len(index) == 2000 - len(gone) + 1


def test_input_conversions_give_same_results(data):
    base, queries = data
    index = vsr_index.FlatIndex(40)
    index.add(base.astype(np.float64))  # converted
    ref = index.search(queries, 5)
    for q in (
        queries.astype(np.float64),
        np.asfortranarray(queries),
        np.repeat(queries, 2, axis=0)[::2],  # non-contiguous view
        queries.tolist(),
    ):
        got = index.search(q, 5)
        np.testing.assert_array_equal(got[1], ref[1])
    ints = vsr_index.FlatIndex(3)
    ints.add(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32), ids=np.array([9, 8], dtype=np.uint8))
    s, i = ints.search(np.array([1, 0, 0], dtype=np.int16), 2)
    assert list(i[0]) == [8, 9] and list(s[0]) == [4.0, 1.0]
