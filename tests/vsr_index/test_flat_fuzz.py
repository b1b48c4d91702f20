"""Property tests: random indexes and queries agree with numpy, and random junk handed to the
array entry points is either converted or rejected with TypeError/ValueError, never a crash."""

import contextlib

import numpy as np
import pytest
from flat_reference import assert_same_topk, scores, topk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vsr_index

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=120, deadline=None)
@given(
    dim=st.integers(1, 40),
    n=st.integers(1, 120),
    nq=st.integers(1, 9),
    metric=st.sampled_from(["ip", "cosine", "l2"]),
    isa=st.sampled_from(vsr_index.simd_info()["available"]),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_matches_numpy(dim, n, nq, metric, isa, threads, seed, data):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n))
    index = vsr_index.FlatIndex(dim, metric=metric)
    index.set_isa(isa)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    index.add(base, ids=ids)
    got_s, got_i = index.search(queries, k, num_threads=threads)
    all_scores = scores(base, queries, metric)
    ref_s, ref_rows = topk(base, queries, metric, k)
    # Map returned ids back to rows to compare with the reference.
    row_of = {int(v): r for r, v in enumerate(ids)}
    got_rows = np.vectorize(row_of.__getitem__)(got_i)
    assert_same_topk(got_s, got_rows, ref_s, ref_rows, all_scores, metric, atol=2e-4)


@settings(max_examples=200, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes()),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
    ),
    ids=st.one_of(
        st.none(), hnp.arrays(dtype=hnp.scalar_dtypes(), shape=hnp.array_shapes(max_dims=2, max_side=5))
    ),
)
def test_array_entry_points_never_crash(arr, ids):
    index = vsr_index.FlatIndex(4, metric="l2")
    index.add(np.eye(4, dtype=np.float32))
    for call in (
        lambda: index.add(arr, ids=ids),
        lambda: index.search(arr, 1),
        lambda: index.search(np.ones(4), 1, allow=ids) if ids is not None else None,
        lambda: index.range_search(arr, 1.0),
        lambda: index.remove(arr),
        lambda: index.score_ids(np.ones(4), arr),
    ):
        with contextlib.suppress(TypeError, ValueError, KeyError, OverflowError):
            call()
    # Whatever happened, the index is consistent: searching everything returns distinct known ids.
    s, i = index.search(np.zeros(4, dtype=np.float32), len(index))
    assert len(set(i[0].tolist())) == len(index) and (i >= 0).all()
    assert np.isfinite(s).all()


@pytest.mark.parametrize("storage", ["f16", "bf16", "int8"])
@settings(max_examples=40, deadline=None)
@given(vectors=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12), elements=finite))
def test_compressed_scores_stay_near_exact(storage, vectors):
    n, dim = vectors.shape
    index = vsr_index.FlatIndex(dim, metric="ip", storage=storage)
    index.add(vectors)
    q = np.ones(dim, dtype=np.float32)
    got = index.score_ids(q, np.arange(n))
    exact = vectors.astype(np.float64) @ q
    # Error bound of the format: relative per element (f16 2^-11, bf16 2^-8), int8 half a step
    # of max|x| / 127 per element.
    amax = np.abs(vectors).max(axis=1)
    bound = {"f16": 2**-11 * np.abs(vectors).sum(1), "bf16": 2**-8 * np.abs(vectors).sum(1)}.get(
        storage, amax / 127 * 0.5 * dim
    )
    assert (np.abs(got - exact) <= bound * 1.01 + 1e-3).all()
