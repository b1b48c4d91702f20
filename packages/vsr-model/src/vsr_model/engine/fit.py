"""Contrastive training of the dual encoder's video side (temporal pooler + projector).

Both encoders are frozen, so their outputs are computed once: frame features per video (cached on
disk) and query embeddings per caption. Training then only runs the small pooler: symmetric InfoNCE
between each video and one of its captions, with the other videos of the batch as negatives.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vsr_model.corpus import Corpus
from vsr_model.data.records import Moment
from vsr_model.engine.dual import DualEncoderEngine, FrameFeatures
from vsr_model.engine.evaluate import encode_queries
from vsr_model.fileio import atomic_torch_save
from vsr_model.metrics import recall_summary, score_ranks

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    epochs: int = 40
    batch_size: int = 64  # videos per step (in-batch negatives)
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 0.05
    frame_dropout: float = 0.2  # augmentation: drop each frame with this probability (>= 1 kept)
    warmup_steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("FitConfig: need epochs >= 1 and batch_size >= 2 (in-batch negatives)")
        if not (self.lr > 0 and self.temperature > 0 and 0 <= self.frame_dropout < 1):
            raise ValueError("FitConfig: lr and temperature must be positive, frame_dropout in [0, 1)")


def extract_features(
    engine: DualEncoderEngine,
    corpus: Corpus,
    video_ids: Sequence[str],
    cache_file: Path | None = None,
    progress: bool = True,
) -> dict[str, FrameFeatures]:
    """Frozen frame features for `video_ids`, read from / written to `cache_file` (keyed by settings).

    The cache holds only tensors and plain Python values and is read with torch's weights-only
    unpickler, so a planted file cannot run code; one that does not load that way (tampered, torn,
    or of another layout) is reported and recomputed."""
    from tqdm import tqdm

    key = {"frames": asdict(engine.config.frames), "sampling": asdict(corpus.sampling)}
    cached: dict[str, FrameFeatures] = {}
    if cache_file is not None and cache_file.is_file():
        cached = _read_feature_cache(cache_file, key)
    todo = [v for v in video_ids if v not in cached]
    for vid in tqdm(todo, desc="frame features", disable=not progress or not todo, unit="video"):
        cached[vid] = engine.frame_features(corpus.clip(vid))
    if cache_file is not None and todo:
        items = {v: (f.features, f.timestamps, f.duration) for v, f in cached.items()}
        atomic_torch_save(cache_file, {"key": key, "items": items})
    return {v: cached[v] for v in video_ids}


def _read_feature_cache(cache_file: Path, key: dict[str, Any]) -> dict[str, FrameFeatures]:
    """The cached features of `cache_file` when it was computed with settings `key`, else none."""
    try:
        blob = torch.load(cache_file, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or not isinstance(blob.get("items"), dict):
            raise ValueError("not a feature cache")
        if blob.get("key") != key:
            logger.info("%s was computed with other settings; recomputing", cache_file)
            return {}
        cached = {}
        for vid, (features, timestamps, duration) in blob["items"].items():
            if not (isinstance(features, torch.Tensor) and isinstance(timestamps, torch.Tensor)):
                raise ValueError(f"entry {vid!r} is not a pair of tensors")
            cached[vid] = FrameFeatures(features, timestamps, float(duration))
        return cached
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring the frame-feature cache %s (%s); recomputing it", cache_file, exc)
        return {}


def _drop_frames(item: FrameFeatures, p: float, rng: random.Random) -> FrameFeatures:
    if p <= 0:
        return item
    keep = [i for i in range(item.features.shape[0]) if rng.random() >= p]
    if not keep:
        keep = [rng.randrange(item.features.shape[0])]
    idx = torch.tensor(keep)
    return FrameFeatures(item.features[idx], item.timestamps[idx], item.duration)


def info_nce(queries: torch.Tensor, videos: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (query, video) rows."""
    logits = queries @ videos.T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def evaluate_features(engine: DualEncoderEngine, moments: Sequence[Moment], feats: dict[str, FrameFeatures],
                      query_emb: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """R@k of `moments` against the videos in `feats`, through the current pooler (no index needed)."""
    ids = list(feats)
    rows = {v: i for i, v in enumerate(ids)}
    engine.pooler.eval()
    with torch.no_grad():
        videos = torch.cat(
            [engine.pool([feats[v] for v in ids[i : i + 128]]).cpu() for i in range(0, len(ids), 128)]
        )
    targets = np.array([rows[m.video_id] for m in moments])
    return recall_summary(score_ranks(query_emb, videos, targets), len(ids))


def fit_pooler(
    engine: DualEncoderEngine,
    train: Sequence[Moment],
    train_feats: dict[str, FrameFeatures],
    config: FitConfig,
    val: Sequence[Moment] | None = None,
    val_feats: dict[str, FrameFeatures] | None = None,
) -> list[dict[str, Any]]:
    """Train the pooler in place; keeps the weights of the best validation MRR (last epoch without val)."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(train):
        if m.video_id not in train_feats:
            raise KeyError(f"no frame features for training video {m.video_id!r}")
        by_video[m.video_id].append(i)
    videos = sorted(by_video)
    if len(videos) < 2:
        raise ValueError("training needs at least two videos with queries")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    q_train = encode_queries(engine, [m.query for m in train]).to(engine.device)
    q_val = encode_queries(engine, [m.query for m in val]) if val else None
    params = [p for p in engine.pooler.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(videos) / config.batch_size)
    total = steps_per_epoch * config.epochs
    history, best, best_state, step = [], -1.0, None, 0
    for epoch in range(config.epochs):
        engine.pooler.train()
        rng.shuffle(videos)
        losses = []
        for b in range(0, len(videos), config.batch_size):
            batch = videos[b : b + config.batch_size]
            if len(batch) < 2:
                continue
            picks = [rng.choice(by_video[v]) for v in batch]
            v_emb = engine.pool([_drop_frames(train_feats[v], config.frame_dropout, rng) for v in batch])
            loss = info_nce(q_train[picks], v_emb, config.temperature)
            for group in opt.param_groups:
                group["lr"] = config.lr * _lr_factor(step, total, config.warmup_steps)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else float("nan"),
        }
        if val and val_feats is not None:
            record["val"] = evaluate_features(engine, val, val_feats, q_val)
            if record["val"]["MRR"] > best:
                best, best_state = record["val"]["MRR"], copy.deepcopy(engine.pooler.state_dict())
        history.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)
    if best_state is not None:
        engine.pooler.load_state_dict(best_state)
    engine.pooler.eval()
    return history
