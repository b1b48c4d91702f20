"""reconstruct(ids): the stored rows of the given ids, in order, for every index kind and storage."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thread_harness import run_concurrently

import vsr_index

DIM = 12
# (kind, storage, rerank, largest decode error relative to the row's largest magnitude; 0 = exact)
KINDS = [
    ("flat", "f32", 0, 0.0),
    ("flat", "f16", 0, 1e-3),
    ("flat", "bf16", 0, 8e-3),
    ("flat", "int8", 0, 1 / 127),
    ("flat", "int8", 2, 0.0),
    ("flat", "bf16", 3, 0.0),
    ("graph", "f32", 0, 0.0),
    ("graph", "int8", 0, 0.0),  # compressed graph indexes keep float32 originals
    ("graph", "f16", 0, 0.0),
]


def _make(kind, metric, storage, rerank):
    if kind == "flat":
        return vsr_index.FlatIndex(DIM, metric=metric, storage=storage, rerank=rerank)
    return vsr_index.GraphIndex(DIM, metric=metric, storage=storage, M=8, ef_construction=40)


def _expected(rows, metric):
    rows = rows.astype(np.float64)
    if metric == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _check(got, want, tol, metric):
    assert got.dtype == np.float32 and got.shape == want.shape
    if tol == 0 and metric != "cosine":
        np.testing.assert_array_equal(got, want.astype(np.float32))
    else:
        allowed = tol * np.abs(want).max(axis=1, keepdims=True) + 1e-6
        assert np.all(np.abs(got - want) <= allowed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    case=st.sampled_from(KINDS),
    metric=st.sampled_from(["ip", "cosine", "l2"]),
    n=st.integers(1, 60),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_reconstruct_returns_the_added_rows(case, metric, n, seed, data):
    kind, storage, rerank, tol = case
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((n, DIM)) * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64)
    index = _make(kind, metric, storage, rerank)
    index.add(rows, ids=ids)
    picks = data.draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=2 * n))  # repeats, any order
    got = index.reconstruct(ids[picks])
    assert got.shape == (len(picks), DIM)
    _check(got, _expected(rows[picks], metric), tol, metric)


@pytest.mark.parametrize(
    "case", KINDS, ids=lambda c: f"{c[0]}-{c[1]}-r{c[2]}" if isinstance(c, tuple) else None
)
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_reconstruct_after_remove_and_mmap_load(case, metric, tmp_path):
    kind, storage, rerank, tol = case
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((200, DIM)).astype(np.float32)
    index = _make(kind, metric, storage, rerank)
    index.add(rows)  # ids 0..199
    index.remove([0, 5, 6, 150])
    extra = rng.standard_normal((3, DIM)).astype(np.float32)
    index.add(extra, ids=[1000, 1001, 1002])  # a graph index reuses the freed slots
    want_ids = np.array([199, 1001, 1, 149, 151, 1002, 1], dtype=np.int64)
    table = {i: rows[i] for i in range(200)} | {1000 + j: extra[j] for j in range(3)}
    want = _expected(np.stack([table[i] for i in want_ids]), metric)
    _check(index.reconstruct(want_ids), want, tol, metric)
    with pytest.raises(KeyError, match="2 ids are not in the index: 5, 150"):
        index.reconstruct([3, 5, 150])
    path = tmp_path / "index.vsr"
    index.save(path)
    loaded = vsr_index.load(path, mmap=True)
    assert loaded.is_mapped
    _check(loaded.reconstruct(want_ids), want, tol, metric)
    assert loaded.is_mapped  # reading rows copies nothing
    assert loaded.reconstruct(np.array([], dtype=np.int64)).shape == (0, DIM)


def test_reconstruct_single_unknown_id_and_bad_input():
    index = vsr_index.FlatIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    with pytest.raises(KeyError, match="id 9 is not in the index"):
        index.reconstruct([9])
    with pytest.raises(TypeError, match="integer dtype"):
        index.reconstruct([0.5])
    np.testing.assert_array_equal(index.reconstruct(2), np.eye(4, dtype=np.float32)[[2]])


@pytest.mark.parametrize("kind", ["flat", "graph"])
def test_reconstruct_runs_alongside_searches(kind):
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2000, DIM)).astype(np.float32)
    index = _make(kind, "ip", "f32", 0)
    index.add(rows)
    queries = rng.standard_normal((64, DIM)).astype(np.float32)
    expected_ids = index.search(queries, 5)[1]

    def reader(rng: np.random.Generator) -> None:
        pick = rng.integers(0, 2000, 32)
        np.testing.assert_array_equal(index.reconstruct(pick), rows[pick])

    def searcher() -> None:
        for _ in range(20):
            np.testing.assert_array_equal(index.search(queries, 5)[1], expected_ids)

    run_concurrently(reader, 3, searcher, min_rounds=50)
