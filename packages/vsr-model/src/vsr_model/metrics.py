"""VCMR, VR and VER metrics of VideoSearch-R1, all in percent, and their paired bootstrap intervals.

- VCMR IoU=m R@1 (m in 0.3/0.5/0.7), the paper's rule: a query scores iff its answer is `matched`, the
  span parses, the video shown in that turn is the ground-truth video and IoU(pred, gt) >= m.
  mIoU averages IoU over all queries, counting 0 where the rule's first three conditions fail.
- VCMR R@K at IoU=m for ranked (video, span) predictions, the TVR definition: a query scores iff any
  of its top-K predictions has the ground-truth video and IoU >= m.
- VR R@k and MRR: the rank of the ground-truth video in a ranking. Reported for the ranking of the
  turn the agent stopped on (its first entry is the video it verified) and for the last, post-
  refinement ranking (what the authors report). The engine's own evaluation ranks every indexed
  video by score (`score_ranks`); both go through `recall_and_mrr`.
- VER: verdict accuracy over every verify decision. Lenient drops unparseable verdicts from the
  denominator (the authors' choice); strict counts them wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from vsr_model.protocol import QueryTrace, TurnTrace

IOU_THRESHOLDS = (0.3, 0.5, 0.7)
VR_KS = (1, 5, 10)


def temporal_iou(pred: tuple[float, float] | None, gt: tuple[float, float] | None) -> float:
    """IoU of two [start, end] intervals in seconds; 0 for a missing or degenerate prediction."""
    if pred is None or gt is None:
        return 0.0
    ps, pe = float(pred[0]), float(pred[1])
    gs, ge = float(gt[0]), float(gt[1])
    if not all(math.isfinite(v) for v in (ps, pe, gs, ge)):
        raise ValueError(f"non-finite span in IoU: pred={pred!r} gt={gt!r}")
    if ge < gs:
        raise ValueError(f"ground-truth span {gt!r} ends before it starts")
    if pe < ps:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    if union <= 0.0:
        # Two identical instants: the same point is a perfect match, otherwise no overlap.
        return 1.0 if (ps == gs and pe == ge) else 0.0
    return inter / union


def rank_of(ranking: Sequence[str], target: str | None) -> int | None:
    """1-based rank of `target`, None when absent."""
    if target is None:
        return None
    for i, video in enumerate(ranking):
        if video == target:
            return i + 1
    return None


def _percent(hits: int | float, total: int) -> float:
    return 100.0 * hits / total if total else float("nan")


def _require_ground_truth(traces: Sequence[QueryTrace]) -> None:
    for trace in traces:
        if trace.gt_video is None or trace.gt_span is None:
            raise ValueError(
                f"query {trace.query_id!r} has no ground truth; metrics need gt_video and gt_span"
            )


def answer_iou(trace: QueryTrace) -> float:
    """IoU of the answer under the paper's rule: 0 unless matched, parsed and on the right video."""
    turn = trace.answer_turn
    if turn is None or turn.parsed.span is None or turn.shown_video != trace.gt_video:
        return 0.0
    return temporal_iou(turn.parsed.span, trace.gt_span)


def vcmr_at_one(
    traces: Sequence[QueryTrace], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, float]:
    """VCMR IoU=m R@1 for each m and mIoU, in percent."""
    _require_ground_truth(traces)
    ious = [answer_iou(t) for t in traces]
    out = {f"vcmr_r1_iou{m:g}": _percent(sum(iou >= m for iou in ious), len(ious)) for m in thresholds}
    out["miou"] = _percent(sum(ious), len(ious))
    return out


def vcmr_recall_at_k(
    predictions: Sequence[Sequence[tuple[str, float, float]]],
    ground_truth: Sequence[tuple[str, float, float]],
    ks: Sequence[int] = (1, 5, 10, 100),
    thresholds: Sequence[float] = (0.5, 0.7),
) -> dict[str, float]:
    """TVR-style VCMR R@K at IoU=m over ranked (video_id, start, end) predictions, in percent."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truth)} queries")
    if any(k < 1 for k in ks):
        raise ValueError(f"K must be >= 1, got {list(ks)}")
    out: dict[str, float] = {}
    for m in thresholds:
        # Rank of the first correct prediction per query, so every K is answered in one pass.
        first_hit: list[int | None] = []
        for preds, (gt_video, gs, ge) in zip(predictions, ground_truth, strict=True):
            hit = None
            for i, (video, s, e) in enumerate(preds):
                if video == gt_video and temporal_iou((s, e), (gs, ge)) >= m:
                    hit = i + 1
                    break
            first_hit.append(hit)
        for k in ks:
            out[f"r{k}_iou{m:g}"] = _percent(sum(h is not None and h <= k for h in first_hit), len(first_hit))
    return out


def score_ranks(queries, videos, targets: Sequence[int] | np.ndarray, chunk: int = 1024) -> np.ndarray:
    """1-based rank of video targets[i] for query i, scoring every video (queries @ videos.T; torch
    tensors or numpy arrays). Ties count against the target."""
    import torch

    queries, videos = torch.as_tensor(queries), torch.as_tensor(videos)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if t.shape != (queries.shape[0],):
        raise ValueError(f"{t.shape[0] if t.ndim else 0} targets for {queries.shape[0]} queries")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= videos.shape[0]):
        raise ValueError(f"target rows must lie in [0, {videos.shape[0]})")
    ranks = np.empty(len(t), dtype=np.int64)
    for i in range(0, queries.shape[0], chunk):
        scores = queries[i : i + chunk] @ videos.T
        gt = scores.gather(1, t[i : i + chunk, None])
        ranks[i : i + chunk] = (scores >= gt).sum(1).numpy()
    return ranks


def recall_and_mrr(ranks: Sequence[int | None] | np.ndarray, ks: Sequence[int] = VR_KS) -> dict[str, float]:
    """R@k for each k and MRR as fractions, from 1-based ranks (None: the target was not retrieved,
    which counts 0 towards both)."""
    if len(ranks) == 0:
        raise ValueError("no queries to evaluate")
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    found = np.array([r for r in ranks if r is not None], dtype=np.float64)
    if (found < 1).any():
        raise ValueError("ranks are 1-based")
    out = {f"R@{k}": float((found <= k).sum() / len(ranks)) for k in ks}
    out["MRR"] = float((1.0 / found).sum() / len(ranks))
    return out


def video_retrieval(
    rankings: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = VR_KS
) -> dict:
    """VR R@k (percent) and MRR (percent; 0 where the target was not retrieved)."""
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings for {len(targets)} targets")
    if not rankings:
        return {**{f"r{k}": float("nan") for k in ks}, "mrr": float("nan")}
    ranks = [rank_of(r, t) for r, t in zip(rankings, targets, strict=True)]
    fractions = recall_and_mrr(ranks, ks)
    out = {f"r{k}": 100.0 * fractions[f"R@{k}"] for k in ks}
    out["mrr"] = 100.0 * fractions["MRR"]
    return out


def recall_summary(ranks: np.ndarray, num_videos: int, ks: Sequence[int] = VR_KS) -> dict[str, float]:
    """R@k and MRR (fractions) of full-corpus ranks, the median rank, and what a random ranking gets
    (chance R@k = min(k, N) / N)."""
    out: dict[str, float] = {"queries": len(ranks), "videos": int(num_videos)}
    fractions = recall_and_mrr(ranks, ks)
    for k in ks:
        out[f"R@{k}"] = fractions[f"R@{k}"]
        out[f"chance_R@{k}"] = min(k, num_videos) / num_videos
    out["MRR"] = fractions["MRR"]
    out["median_rank"] = float(np.median(ranks))
    return out


def stopping_turn(trace: QueryTrace) -> TurnTrace:
    """The turn the agent stopped on: its first matched turn, else its last turn."""
    if not trace.turns:
        raise ValueError(f"query {trace.query_id!r} has no turns")
    return trace.answer_turn or trace.turns[-1]


def verification_accuracy(turns: Iterable[TurnTrace]) -> dict[str, float]:
    """VER lenient (unparseable verdicts excluded) and strict (counted wrong), in percent."""
    correct = parsed = total = 0
    for turn in turns:
        if turn.label_matched is None:
            raise ValueError(f"turn {turn.turn} has no verification label")
        total += 1
        if turn.parsed.answer is None:
            continue
        parsed += 1
        correct += turn.parsed.matched == turn.label_matched
    return {
        "ver_lenient": _percent(correct, parsed),
        "ver_strict": _percent(correct, total),
        "unparsed": _percent(total - parsed, total),
    }


def summarize(traces: Sequence[QueryTrace], ks: Sequence[int] = VR_KS) -> dict[str, float]:
    """The paper's table row: VCMR R@1 at IoU 0.3/0.5/0.7, mIoU, VER, VR for both rankings."""
    if not traces:
        raise ValueError("no traces to summarize")
    _require_ground_truth(traces)
    out: dict[str, float] = dict(vcmr_at_one(traces))
    out.update(verification_accuracy(t for trace in traces for t in trace.turns))
    targets = [t.gt_video for t in traces]
    verified = video_retrieval([stopping_turn(t).ranking for t in traces], targets, ks)
    post = video_retrieval([t.final_ranking or stopping_turn(t).ranking for t in traces], targets, ks)
    out.update({f"vr_verified_{k}": v for k, v in verified.items()})
    out.update({f"vr_post_refinement_{k}": v for k, v in post.items()})
    out["mean_turns"] = sum(len(t.turns) for t in traces) / len(traces)
    out["queries"] = float(len(traces))
    scores = score_matrix(traces)
    for key in ("ver_turn1", "gt_rank_mean", "text_tokens_per_query", "latent_tokens_per_query",
                "generated_tokens_per_query"):  # fmt: skip
        values = scores[key][np.isfinite(scores[key])]
        out[key] = float(values.mean()) if values.size else math.nan
    out["majority_rate"] = majority_rate(traces)
    return out


def per_turn_table(traces: Sequence[QueryTrace], max_turns: int | None = None) -> list[dict[str, float]]:
    """One row per turn t: the metrics had the agent been cut off after turn t.

    A query that stopped earlier keeps its state. VCMR counts answers given at turn <= t; `vr_r1` asks
    whether the video verified at turn min(t, last) is the ground truth; `ver_*` covers the decisions
    made at turn t only; `active` is the percentage of queries still searching at turn t.
    """
    if not traces:
        raise ValueError("no traces for a per-turn table")
    _require_ground_truth(traces)
    horizon = max_turns or max(len(t.turns) for t in traces)
    rows = []
    for t in range(1, horizon + 1):
        ious, vr_hits = [], 0
        for trace in traces:
            answer = trace.answer_turn
            if answer is not None and answer.turn <= t and answer.parsed.span is not None:
                ious.append(
                    temporal_iou(answer.parsed.span, trace.gt_span)
                    if answer.shown_video == trace.gt_video
                    else 0.0
                )
            else:
                ious.append(0.0)
            upto = [turn for turn in trace.turns if turn.turn <= t]
            vr_hits += bool(upto) and upto[-1].shown_video == trace.gt_video
        row: dict[str, float] = {"turn": float(t)}
        for m in IOU_THRESHOLDS:
            row[f"vcmr_r1_iou{m:g}"] = _percent(sum(iou >= m for iou in ious), len(ious))
        row["miou"] = _percent(sum(ious), len(ious))
        row["vr_r1"] = _percent(vr_hits, len(traces))
        row.update(verification_accuracy(turn for trace in traces for turn in trace.turns if turn.turn == t))
        row["active"] = _percent(
            sum(any(turn.turn == t for turn in trace.turns) for trace in traces), len(traces)
        )
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, float]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of metric rows (one decimal place)."""
    if not rows:
        raise ValueError("no rows")
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            cells.append(f"{int(value)}" if c == "turn" else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- per-query scores and paired bootstrap confidence intervals ----------------------------------------

# Per-query metrics that average into a summary value: name -> scale (100: a percentage of queries).
QUERY_METRICS: dict[str, float] = {
    **{f"vcmr_r1_iou{m:g}": 100.0 for m in IOU_THRESHOLDS},
    "miou": 100.0,
    "vr_verified_r1": 100.0,
    "vr_post_refinement_r1": 100.0,
    "gt_rank_mean": 1.0,
    "ver_turn1": 100.0,
    "text_tokens_per_query": 1.0,
    "latent_tokens_per_query": 1.0,
    "generated_tokens_per_query": 1.0,
}


def query_scores(trace: QueryTrace) -> dict[str, float]:
    """One query's value of every QUERY_METRICS entry (unscaled; NaN where it does not apply: the
    ground-truth rank when the video was excluded or unknown, token counts never recorded)."""
    if not trace.turns:
        raise ValueError(f"query {trace.query_id!r} has no turns")
    iou = answer_iou(trace)
    out = {f"vcmr_r1_iou{m:g}": float(iou >= m) for m in IOU_THRESHOLDS}
    out["miou"] = iou
    out["vr_verified_r1"] = float(stopping_turn(trace).shown_video == trace.gt_video)
    final = trace.final_ranking or stopping_turn(trace).ranking
    out["vr_post_refinement_r1"] = float(bool(final) and final[0] == trace.gt_video)
    out["gt_rank_mean"] = float(trace.final_gt_rank) if trace.final_gt_rank is not None else math.nan
    first = trace.turns[0]
    if first.label_matched is None:
        raise ValueError(f"query {trace.query_id!r}: turn 1 has no verification label")
    out["ver_turn1"] = float(first.parsed.answer is not None and first.parsed.matched == first.label_matched)
    text = [t.response_tokens for t in trace.turns]
    out["text_tokens_per_query"] = math.nan if any(n is None for n in text) else float(sum(text))
    out["latent_tokens_per_query"] = float(
        sum(t.refinement_tokens for t in trace.turns if t.rewritten_query is None)
    )
    out["generated_tokens_per_query"] = out["text_tokens_per_query"] + out["latent_tokens_per_query"]
    return out


def score_matrix(traces: Sequence[QueryTrace]) -> dict[str, np.ndarray]:
    """QUERY_METRICS name -> (n_queries,) values, scaled, in trace order."""
    rows = [query_scores(t) for t in traces]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) * scale for k, scale in QUERY_METRICS.items()}


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) over queries resampled in pairs (a[i], b[i]
    are the same query under two agents). NaN entries are left out of both means of a resample."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores must be two equal non-empty vectors, got {a.shape} and {b.shape}")
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"need samples >= 1 and 0 < level < 1, got {samples}, {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(samples, a.size))
    with np.errstate(invalid="ignore"):
        diffs = np.nanmean(a[idx], axis=1) - np.nanmean(b[idx], axis=1)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(low), float(high)


def majority_rate(traces: Sequence[QueryTrace]) -> float:
    """Percentage of the more frequent label among the turn-1 verify decisions (what a constant verdict
    scores as VER at turn 1)."""
    labels = [t.turns[0].label_matched for t in traces if t.turns]
    if not labels or any(v is None for v in labels):
        raise ValueError("majority rate needs a verification label on every first turn")
    share = sum(bool(v) for v in labels) / len(labels)
    return 100.0 * max(share, 1 - share)
