"""Stage-1 / Stage-2 examples of the VideoSearch-R1 task: built from the search engine's top-1 for each
query (``vsr train build-data``) and read back for training. One jsonl row per example::

    {"query_id", "query", "video_id", "start", "end", "duration",
     "retrieved": engine top-1 id, "matched": bool, "rationale": str, "hard_negatives": [ids]}
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    query_id: str
    query: str
    video_id: str
    start: float
    end: float
    retrieved: str
    matched: bool
    rationale: str
    hard_negatives: tuple[str, ...]

    @property
    def span(self) -> tuple[float, float]:
        return (self.start, self.end)


def default_rationale(matched: bool) -> str:
    """The rationale when the dataset has none. Short on purpose: a template carries no evidence, and
    repeating the query in it would double the tokens every verify turn generates."""
    if matched:
        return "The video shows the moment the query describes."
    return "The video does not show the moment the query describes."


def example_row(moment: Any, hits: Sequence[Any], num_hard_negatives: int) -> dict[str, Any]:
    """One example: the moment, the engine's ranked ``hits`` for its query, the label, a rationale."""
    top1 = hits[0].video_id
    matched = top1 == moment.video_id
    return {
        "query_id": str(moment.query_id),
        "query": moment.query,
        "video_id": moment.video_id,
        "start": float(moment.start),
        "end": float(moment.end),
        "duration": None if moment.duration is None else float(moment.duration),
        "retrieved": top1,
        "matched": matched,
        "rationale": (moment.extra or {}).get("rationale") or default_rationale(matched),
        "hard_negatives": [h.video_id for h in hits[1:] if h.video_id != moment.video_id][
            :num_hard_negatives
        ],
    }


def build_examples(
    moments: Sequence[Any],
    engine,
    per_class: int,
    seed: int = 0,
    num_hard_negatives: int = 24,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Balanced Stage-1 examples: each query with the engine's top-1 video, labelled matched / not
    matched, ``per_class`` of each (fewer, with a warning, if the split has fewer). The rationale comes
    from the moment's ``extra["rationale"]`` when the dataset provides one, else a short default."""
    if per_class < 1:
        raise ValueError("per_class must be >= 1")
    order = list(range(len(moments)))
    random.Random(seed).shuffle(order)
    picked: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for start in range(0, len(order), batch_size):
        if all(len(v) >= per_class for v in picked.values()):
            break
        chunk = [moments[i] for i in order[start : start + batch_size]]
        with torch.no_grad():
            results = engine.search([m.query for m in chunk], num_hard_negatives + 2)
        for moment, hits in zip(chunk, results, strict=True):
            if not hits:
                raise RuntimeError(f"the engine returned no video for query {moment.query_id!r}")
            top1 = hits[0].video_id
            matched = top1 == moment.video_id
            if len(picked[matched]) >= per_class:
                continue
            picked[matched].append(example_row(moment, hits, num_hard_negatives))
    for label, rows in picked.items():
        if not rows:
            raise ValueError(
                f"no {'matched' if label else 'not-matched'} (query, top-1) pair in {len(moments)} queries"
            )
        if len(rows) < per_class:
            log.warning(
                "only %d %s examples (asked for %d)",
                len(rows),
                "matched" if label else "not-matched",
                per_class,
            )
    rows = picked[True] + picked[False]
    random.Random(seed + 1).shuffle(rows)
    return rows


def read_examples(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"example file not found: {path} (write it with `vsr train build-data`)")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(
                Example(
                    query_id=str(row["query_id"]),
                    query=str(row["query"]),
                    video_id=str(row["video_id"]),
                    start=float(row["start"]),
                    end=float(row["end"]),
                    retrieved=str(row["retrieved"]),
                    matched=bool(row["matched"]),
                    rationale=str(row["rationale"]),
                    hard_negatives=tuple(str(v) for v in row.get("hard_negatives", [])),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: malformed example row: {exc}") from exc
    if not out:
        raise ValueError(f"{path}: no examples")
    return out
