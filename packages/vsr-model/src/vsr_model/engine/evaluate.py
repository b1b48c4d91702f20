"""Video-retrieval evaluation of an indexed engine: rank of each query's ground-truth video."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vsr_model.data.records import Moment


def encode_queries(engine, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """Query embeddings (n, D) in batches, without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            out.append(engine.encode_query(list(texts[i : i + batch_size])).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, engine.embed_dim)


def ground_truth_ranks(
    queries: torch.Tensor, videos: torch.Tensor, targets: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """1-based rank of targets[i] among all videos for query i (ties count against the target)."""
    ranks = np.empty(len(targets), dtype=np.int64)
    t = torch.as_tensor(targets, dtype=torch.long)
    for i in range(0, queries.shape[0], chunk):
        scores = queries[i : i + chunk] @ videos.T
        gt = scores.gather(1, t[i : i + chunk, None])
        ranks[i : i + chunk] = ((scores >= gt).sum(1)).numpy()
    return ranks


def recall_summary(ranks: np.ndarray, num_videos: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k, MRR and median rank, with what a random ranking gets (chance R@k = min(k, N) / N)."""
    if len(ranks) == 0:
        raise ValueError("no queries to evaluate")
    out: dict[str, float] = {"queries": len(ranks), "videos": int(num_videos)}
    for k in ks:
        out[f"R@{k}"] = float(np.mean(ranks <= k))
        out[f"chance_R@{k}"] = min(k, num_videos) / num_videos
    out["MRR"] = float(np.mean(1.0 / ranks))
    out["median_rank"] = float(np.median(ranks))
    return out


def evaluate_retrieval(engine, moments: Sequence[Moment], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k of the engine's index for `moments` (every ground-truth video must be indexed)."""
    if not moments:
        raise ValueError("no queries to evaluate")
    targets = engine.index.rows_of([m.video_id for m in moments])
    queries = encode_queries(engine, [m.query for m in moments])
    videos = torch.from_numpy(engine.index.vectors())
    return recall_summary(ground_truth_ranks(queries, videos, targets), len(engine), ks)
