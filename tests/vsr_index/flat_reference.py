"""A numpy reference for exact search, shared by the vsr_index test files."""

from __future__ import annotations

import numpy as np


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def scores(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) scores in float64: similarities for ip/cosine, squared distances for l2."""
    b, q = prepare(base, metric), prepare(queries, metric)
    if metric == "l2":
        return ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return q @ b.T


def topk(base: np.ndarray, queries: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row positions) of the k best rows per query, best first."""
    s = scores(base, queries, metric)
    order = np.argsort(s if metric == "l2" else -s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def assert_same_topk(got_scores, got_ids, ref_scores, ref_ids, all_scores, metric, atol=1e-4):
    """Scores match; ids match except where the reference has a near tie at that rank."""
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-4, atol=atol)
    for qi in range(ref_ids.shape[0]):
        for j in range(ref_ids.shape[1]):
            if got_ids[qi, j] == ref_ids[qi, j]:
                continue
            # A tie: the returned id's true score equals the reference score at this rank.
            assert abs(all_scores[qi][got_ids[qi, j]] - ref_scores[qi, j]) <= atol * (
                1 + abs(ref_scores[qi, j])
            )
