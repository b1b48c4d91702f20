"""Re-retrieval of one GRPO group in a single index pass, with exact per-trajectory exclusion.

The G trajectories of a group share one original query; after a refinement turn each has its own refined
query embedding and its own list of videos already shown. ``vsr_model``'s ``SearchEngine.refine_group``
(vsr_index ``refine_group``) scores the G refined queries against one candidate pool of the original, but
takes one deny list for the whole group. ``group_refined_top1`` turns that into exactly what one engine
session per trajectory (or an exhaustive search excluding each trajectory's own seen videos) returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def group_request(seen: Sequence[Sequence[str]]) -> tuple[set[str], int]:
    """(videos every row has seen, k): denying the shared videos, k = 1 + the most videos one row has seen
    beyond them guarantees each row at least one hit it has not seen, when the corpus still has one."""
    if not seen:
        raise ValueError("a group needs at least one row")
    sets = [set(s) for s in seen]
    shared = set.intersection(*sets)
    return shared, 1 + max(len(s - shared) for s in sets)


def group_refined_top1(
    engine: Any,
    original: torch.Tensor,
    refined: torch.Tensor,
    seen: Sequence[Sequence[str]],
    exclude_seen: bool,
) -> list[str]:
    """The best video for each refined query (G, D) of a group sharing ``original`` (1, D); with
    ``exclude_seen`` never one of that row's own ``seen`` videos (a clear error when a row has seen every
    video of the corpus). One ``engine.refine_group`` call for the whole group."""
    if refined.shape[0] != len(seen):
        raise ValueError(f"{refined.shape[0]} refined queries for {len(seen)} rows of seen videos")
    if not exclude_seen:
        results = engine.refine_group(original, refined, 1)
        seen = [()] * len(seen)
    else:
        shared, k = group_request(seen)
        results = engine.refine_group(original, refined, k, exclude=shared)
    out = []
    for row, (hits, own) in enumerate(zip(results, seen, strict=True)):
        own = set(own)
        fresh = [h.video_id for h in hits if h.video_id not in own]
        if not fresh:
            raise RuntimeError(
                f"re-retrieval found no video for row {row} of the group: it has already seen {len(own)} "
                f"videos and the index holds no other"
            )
        out.append(fresh[0])
    return out
