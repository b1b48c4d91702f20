"""The six GRPO rewards of VideoSearch-R1 and their weighted sum.

| reward | value |
| --- | --- |
| verification | +1 if the verdict is right (label: retrieved video == ground truth), else -1 |
| think format | 1 if a non-empty <think> block |
| time format | 1 if <start>/<end> are present iff the answer is matched |
| temporal IoU | IoU(pred, gt) when correctly matched; 0.5 when correctly not_matched; else 0 |
| refine presence | 1 if <REFINE> was emitted |
| retrieval | paper: exp(-L_ret) = p(gt | refined query); code: p(refined) - p(original) |

p is the softmax probability of the ground-truth video among [gt, negatives] at temperature tau.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from enum import Enum

import torch

from vsr_model.metrics import temporal_iou
from vsr_model.protocol import ParsedResponse
from vsr_model.sqr import contrastive_logits


class RetrievalRewardKind(str, Enum):
    """`probability`: the paper's exp(-InfoNCE). `gain`: the authors' code, p(refined) - p(original)."""

    PROBABILITY = "probability"
    GAIN = "gain"


@dataclass
class RewardConfig:
    """Reward weights (defaults inside the ranges the authors used) and the retrieval-reward setting. The
    retrieval reward's softmax temperature and negatives are the InfoNCE objective's
    (vsr_model.sqr.InfoNCEConfig)."""

    verification: float = 1.4
    think_format: float = 0.05
    time_format: float = 0.05
    temporal_iou: float = 0.4
    refine_presence: float = 0.1
    retrieval: float = 0.8
    retrieval_kind: RetrievalRewardKind = RetrievalRewardKind.PROBABILITY
    correct_rejection_iou: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.retrieval_kind, RetrievalRewardKind):
            try:
                self.retrieval_kind = RetrievalRewardKind(str(self.retrieval_kind).lower())
            except ValueError:
                kinds = [k.value for k in RetrievalRewardKind]
                raise ValueError(
                    f"unknown retrieval_kind {self.retrieval_kind!r}; expected one of {kinds}"
                ) from None
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float | int) and not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"reward setting {f.name} must be finite, got {value}")


@dataclass(frozen=True)
class RewardBreakdown:
    """Each reward's unweighted value and the weighted total, for logging every component."""

    verification: float
    think_format: float
    time_format: float
    temporal_iou: float
    refine_presence: float
    retrieval: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def verification_reward(parsed: ParsedResponse, label_matched: bool) -> float:
    """+1 for the right verdict, -1 for the wrong one or none."""
    if parsed.answer is None:
        return -1.0
    return 1.0 if parsed.matched == label_matched else -1.0


def think_format_reward(parsed: ParsedResponse) -> float:
    return 1.0 if parsed.think else 0.0


def time_format_reward(parsed: ParsedResponse) -> float:
    """1 when a matched answer carries a readable span, or a not_matched answer carries no span tags."""
    if parsed.matched:
        return 1.0 if parsed.span is not None else 0.0
    if parsed.not_matched:
        return 0.0 if parsed.span_tags_present else 1.0
    return 0.0


def temporal_iou_reward(
    parsed: ParsedResponse,
    label_matched: bool,
    gt_span: tuple[float, float] | None,
    correct_rejection_value: float = 0.5,
) -> float:
    if parsed.matched and label_matched:
        if gt_span is None:
            raise ValueError("a matched label needs the ground-truth span")
        return temporal_iou(parsed.span, gt_span) if parsed.span is not None else 0.0
    if parsed.not_matched and not label_matched:
        return correct_rejection_value
    return 0.0


def refine_presence_reward(parsed: ParsedResponse) -> float:
    return 1.0 if parsed.refine else 0.0


def ground_truth_probability(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """p(gt | query) = softmax over [positive, negatives] of cosine / tau; query (B, D), negatives (B, n, D)."""
    return contrastive_logits(query, positive, negatives, temperature).softmax(dim=-1)[:, 0]


def retrieval_reward(
    refined_query: torch.Tensor,
    original_query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    kind: RetrievalRewardKind | str = RetrievalRewardKind.PROBABILITY,
    temperature: float = 0.1,
) -> torch.Tensor:
    """(B,) retrieval reward, no gradient: the paper's p(gt | refined) or the code's gain over the original."""
    kind = RetrievalRewardKind(kind)
    with torch.no_grad():
        refined = ground_truth_probability(refined_query, positive, negatives, temperature)
        if kind is RetrievalRewardKind.PROBABILITY:
            return refined
        return refined - ground_truth_probability(original_query, positive, negatives, temperature)


def score_response(
    parsed: ParsedResponse,
    label_matched: bool,
    gt_span: tuple[float, float] | None,
    config: RewardConfig,
    retrieval: float = 0.0,
) -> RewardBreakdown:
    """All six rewards of one response; `retrieval` comes from `retrieval_reward` (0 when not refined)."""
    if not math.isfinite(retrieval):
        raise ValueError(f"retrieval reward must be finite, got {retrieval}")
    values = {
        "verification": verification_reward(parsed, label_matched),
        "think_format": think_format_reward(parsed),
        "time_format": time_format_reward(parsed),
        "temporal_iou": temporal_iou_reward(parsed, label_matched, gt_span, config.correct_rejection_iou),
        "refine_presence": refine_presence_reward(parsed),
        "retrieval": float(retrieval) if parsed.refine else 0.0,
    }
    total = sum(getattr(config, name) * value for name, value in values.items())
    return RewardBreakdown(**values, total=total)


def score_responses(
    parsed: Sequence[ParsedResponse],
    labels_matched: Sequence[bool],
    gt_spans: Sequence[tuple[float, float] | None],
    config: RewardConfig,
    retrieval: Sequence[float] | torch.Tensor | None = None,
) -> list[RewardBreakdown]:
    """`score_response` over a batch (for example a GRPO group)."""
    n = len(parsed)
    if len(labels_matched) != n or len(gt_spans) != n:
        raise ValueError(
            f"batch sizes differ: {n} responses, {len(labels_matched)} labels, {len(gt_spans)} spans"
        )
    if retrieval is None:
        retrieval_values = [0.0] * n
    else:
        retrieval_values = [
            float(v) for v in (retrieval.tolist() if torch.is_tensor(retrieval) else retrieval)
        ]
        if len(retrieval_values) != n:
            raise ValueError(f"{len(retrieval_values)} retrieval rewards for {n} responses")
    return [
        score_response(p, bool(m), s, config, r)
        for p, m, s, r in zip(parsed, labels_matched, gt_spans, retrieval_values, strict=True)
    ]
