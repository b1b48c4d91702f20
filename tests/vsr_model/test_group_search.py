"""The agent's group search (vsr_model.agent.group_search, SearchMode.GROUPS): re-retrieval of a GRPO group
through one SearchEngine.refine_group call returns exactly what one engine session per trajectory, and an
exhaustive search excluding each trajectory's own seen videos, return."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsr_model.agent import group_search
from vsr_model.engine.base import SearchEngine


class VectorEngine(SearchEngine):
    """A search engine over given vectors (its encoders are not needed to search by embedding)."""

    family = "test-vectors"

    @classmethod
    def from_config(cls, values):
        raise NotImplementedError

    def encode_query(self, texts, soft_tokens=None):
        raise NotImplementedError

    def encode_videos(self, clips):
        raise NotImplementedError

    def _save_model(self, directory):
        raise NotImplementedError

    @classmethod
    def _load_model(cls, directory, meta):
        raise NotImplementedError


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _engine(vectors: np.ndarray) -> VectorEngine:
    engine = VectorEngine(vectors.shape[1], vectors.shape[1])
    engine.add_videos([f"v{i:03d}" for i in range(len(vectors))], vectors)
    return engine


def _exhaustive(vectors: np.ndarray, query: np.ndarray, skip: set[str], k: int) -> list[str]:
    order = np.argsort(-(vectors.astype(np.float64) @ query.astype(np.float64)), kind="stable")
    return [f"v{i:03d}" for i in order if f"v{i:03d}" not in skip][:k]


def _exhaustive_top1(vectors: np.ndarray, query: np.ndarray, skip: set[str]) -> str:
    return _exhaustive(vectors, query, skip, 1)[0]


def group_top1(engine, original, refined, seen, exclude_seen):
    return [hits[0].video_id for hits in group_search(engine, original, refined, seen, exclude_seen, 1)]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_videos=st.integers(3, 40),
    dim=st.integers(2, 12),
    group=st.integers(1, 6),
    turns=st.integers(1, 4),
)
def test_group_refinement_equals_per_trajectory_sessions_and_exhaustive_search(
    seed, num_videos, dim, group, turns
):
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((num_videos, dim)))
    engine = _engine(vectors)
    original = _unit(rng.standard_normal((1, dim)))
    sessions = [engine.session(original, 1, exclude_seen=True) for _ in range(group)]
    first = engine.search(original, 1)[0][0].video_id
    assert all(s.hits[0].video_id == first for s in sessions)
    seen = [[first] for _ in range(group)]
    active = list(range(group))
    for _ in range(min(turns, num_videos - 1)):
        # Small moves (the pool answers) and large ones (a fresh search) mixed within the group.
        scale = rng.choice([0.05, 3.0], size=(len(active), 1))
        refined = _unit(original + scale * rng.standard_normal((len(active), dim)))
        got = group_top1(engine, original, refined, [seen[i] for i in active], exclude_seen=True)
        for row, i in enumerate(active):
            expected = _exhaustive_top1(vectors, refined[row], set(seen[i]))
            assert got[row] == expected
            assert sessions[i].refine(refined[row : row + 1], 1)[0].video_id == expected
            seen[i].append(expected)
        # Some trajectories stop (accepted their video): the seen sets of the rest diverge further.
        keep = rng.random(len(active)) < 0.7
        active = [i for i, k in zip(active, keep, strict=True) if k] or active[:1]


def _random_group(seed: int, num_videos: int, dim: int, group: int):
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((num_videos, dim)))
    original = _unit(rng.standard_normal((1, dim)))
    return vectors, _engine(vectors), original, _unit(rng.standard_normal((group, dim)))


def test_without_exclusion_the_group_returns_each_plain_top1():
    vectors, engine, original, refined = _random_group(0, 12, 6, 5)
    seen = [[_exhaustive_top1(vectors, r, set())] for r in refined]  # each row's own top-1, seen before
    got = group_top1(engine, original, refined, seen, exclude_seen=False)
    assert got == [s[0] for s in seen]
    assert got == [hits[0].video_id for hits in engine.search(refined, 1)]


def test_every_row_gets_its_own_k_best_unseen_videos():
    vectors, engine, original, refined = _random_group(2, 30, 6, 4)
    seen = [["v000", "v001", "v002"], ["v000", "v003"], ["v000"], ["v000", "v001", "v004", "v005"]]
    got = group_search(engine, original, refined, seen, exclude_seen=True, k=5)
    for row, hits in enumerate(got):
        assert [h.video_id for h in hits] == _exhaustive(vectors, refined[row], set(seen[row]), 5)


def test_a_row_that_has_seen_the_whole_corpus_gets_no_video_and_shapes_are_checked():
    _, engine, original, refined = _random_group(1, 3, 4, 2)
    got = group_search(engine, original, refined, [["v000"], ["v000", "v001", "v002"]], True, 1)
    assert len(got[0]) == 1 and got[1] == []  # the agent turns an empty result into a clear error
    with pytest.raises(ValueError, match="2 refined queries for 1 rows"):
        group_search(engine, original, refined, [["v000"]], True, 1)
