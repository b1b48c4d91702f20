"""Stage-1 / Stage-2 examples of the VideoSearch-R1 task (``vsr train build-data``) and their reader.

Each example pairs a training query with a video to verify: its ground-truth video (a `matched` example)
or a wrong one the engine ranks high (`not_matched`: the engine's top-1 failures and its other top-k
confusers, the hard negatives a verifier must tell apart). A teacher (vsr_model.data.teacher) writes the
rationale and, for examples in the text-rewrite protocol (HQR), the rewritten query. One jsonl row each::

    {"query_id", "query", "video_id", "start", "end", "duration",
     "retrieved": the video shown, "matched": bool, "rationale": str, "mode": "soft" | "hard",
     "rewrite": str (hard mode), "hard_negatives": [ids]}
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
    mode: str = "soft"
    rewrite: str | None = None

    @property
    def span(self) -> tuple[float, float]:
        return (self.start, self.end)


@dataclass
class ExampleSettings:
    """`num_examples` in all; `positive_fraction` of them matched (the paper: 1,000 + 1,000, i.e. 0.5);
    `hqr_fraction` of them in the text-rewrite protocol, so one Stage 1 trains SQR and HQR on the same
    examples; negatives are drawn from the engine's top `candidates` (its top-1 failures first);
    `num_hard_negatives` engine-ranked wrong videos kept per example for InfoNCE."""

    num_examples: int = 2000
    positive_fraction: float = 0.5
    hqr_fraction: float = 0.0
    candidates: int = 5
    num_hard_negatives: int = 24
    seed: int = 0
    # Instead: each query (in file order, at most num_examples) with the engine's own top-1, as the
    # agent's first turn sees it (no balancing): the set a turn-1 verdict accuracy is measured on.
    natural: bool = False

    def __post_init__(self) -> None:
        if self.num_examples < 2:
            raise ValueError(f"num_examples must be >= 2, got {self.num_examples}")
        for name in ("positive_fraction", "hqr_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.candidates < 2 or self.num_hard_negatives < 1:
            raise ValueError("candidates must be >= 2 and num_hard_negatives >= 1")


def example_row(
    moment: Any, shown: str, hits: Sequence[Any], teacher, num_hard_negatives: int, mode: str
) -> dict:
    """One example: the moment, the video shown, the label, the teacher's rationale (and rewrite)."""
    matched = shown == moment.video_id
    row = {
        "query_id": str(moment.query_id),
        "query": moment.query,
        "video_id": moment.video_id,
        "start": float(moment.start),
        "end": float(moment.end),
        "duration": None if moment.duration is None else float(moment.duration),
        "retrieved": shown,
        "matched": matched,
        "rationale": teacher.rationale(moment, shown),
        "mode": mode,
        "hard_negatives": [h.video_id for h in hits if h.video_id != moment.video_id][:num_hard_negatives],
    }
    if mode == "hard":
        row["rewrite"] = teacher.rewrite(moment, shown)
    return row


def build_examples(
    moments: Sequence[Any], engine, teacher, settings: ExampleSettings, batch_size: int = 64
) -> list[dict[str, Any]]:
    """Examples for `settings` (see ExampleSettings). Fewer than asked, with a warning, when the split has
    too few pairs of a label; an error when it has none."""
    if settings.natural:
        return _natural_examples(moments[: settings.num_examples], engine, teacher, settings, batch_size)
    rng = random.Random(settings.seed)
    order = list(range(len(moments)))
    rng.shuffle(order)
    positives: list[tuple[Any, str, list]] = []
    failures: list[tuple[Any, str, list]] = []  # the engine's top-1 is wrong
    confusers: list[tuple[Any, str, list]] = []  # wrong videos further down its top-k
    depth = max(settings.candidates, settings.num_hard_negatives + 1)
    for start in range(0, len(order), batch_size):
        chunk = [moments[i] for i in order[start : start + batch_size]]
        with torch.no_grad():
            results = engine.search([m.query for m in chunk], depth)
        for moment, hits in zip(chunk, results, strict=True):
            if not hits:
                raise RuntimeError(f"the engine returned no video for query {moment.query_id!r}")
            positives.append((moment, moment.video_id, hits))
            wrong = [h.video_id for h in hits[: settings.candidates] if h.video_id != moment.video_id]
            if wrong and hits[0].video_id != moment.video_id:
                failures.append((moment, wrong[0], hits))
                wrong = wrong[1:]
            confusers.extend((moment, video, hits) for video in wrong)
    want_pos = round(settings.num_examples * settings.positive_fraction)
    want_neg = settings.num_examples - want_pos
    rng.shuffle(confusers)
    negatives = failures + confusers
    picked = positives[:want_pos] + negatives[:want_neg]
    for label, have, want in (("matched", min(len(positives), want_pos), want_pos),
                              ("not-matched", min(len(negatives), want_neg), want_neg)):  # fmt: skip
        if want and not have:
            raise ValueError(f"no {label} (query, video) pair in {len(moments)} queries")
        if have < want:
            log.warning("only %d %s examples (asked for %d)", have, label, want)
    rng.shuffle(picked)
    hard = set(rng.sample(range(len(picked)), round(len(picked) * settings.hqr_fraction)))
    return [
        example_row(m, shown, hits, teacher, settings.num_hard_negatives, "hard" if i in hard else "soft")
        for i, (m, shown, hits) in enumerate(picked)
    ]


def _natural_examples(moments, engine, teacher, settings: ExampleSettings, batch_size: int) -> list[dict]:
    rows = []
    for start in range(0, len(moments), batch_size):
        chunk = moments[start : start + batch_size]
        with torch.no_grad():
            results = engine.search([m.query for m in chunk], settings.num_hard_negatives + 1)
        for moment, hits in zip(chunk, results, strict=True):
            if not hits:
                raise RuntimeError(f"the engine returned no video for query {moment.query_id!r}")
            rows.append(
                example_row(moment, hits[0].video_id, hits, teacher, settings.num_hard_negatives, "soft")
            )
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
            mode = str(row.get("mode", "soft"))
            if mode not in ("soft", "hard"):
                raise ValueError(f"mode must be soft or hard, got {mode!r}")
            rewrite = row.get("rewrite")
            if mode == "hard" and not (isinstance(rewrite, str) and rewrite.strip()):
                raise ValueError("a hard-mode example needs a rewrite")
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
                    mode=mode,
                    rewrite=rewrite,
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: malformed example row: {exc}") from exc
    if not out:
        raise ValueError(f"{path}: no examples")
    return out
