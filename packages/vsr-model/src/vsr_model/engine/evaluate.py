"""Video-retrieval evaluation of an indexed engine: rank of each query's ground-truth video among
every indexed video (the metrics themselves are vsr_model.metrics')."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vsr_model.data.records import Moment
from vsr_model.metrics import VR_KS, recall_summary, score_ranks


def encode_queries(engine, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """Query embeddings (n, D) in batches, without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            out.append(engine.encode_query(list(texts[i : i + batch_size])).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, engine.embed_dim)


def evaluate_retrieval(engine, moments: Sequence[Moment], ks: Sequence[int] = VR_KS) -> dict[str, float]:
    """R@k of the engine's index for `moments` (every ground-truth video must be indexed)."""
    if not moments:
        raise ValueError("no queries to evaluate")
    targets = engine.index.rows_of([m.video_id for m in moments])
    queries = encode_queries(engine, [m.query for m in moments])
    videos = torch.from_numpy(engine.index.vectors())
    return recall_summary(score_ranks(queries, videos, targets), len(engine), ks)
