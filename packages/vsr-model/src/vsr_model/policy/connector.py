"""Connector alignment: fit the composite policy's freshly initialised frame projector before Stage 1.

LLaVA's first stage trains its projector on image captions with the language model frozen. Here the
captions are the training annotations themselves: a frame inside an annotated moment is described by
that moment's query. The projector is fitted by regression onto an IDF-weighted mean of the language
model's input embeddings of the query's tokens, so the fit needs no forward pass through the language
model and takes seconds on a CPU. Stage 1 then starts from frame tokens that sit near the words that
describe them, which the language model can compare with the query, instead of from random vectors.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vsr_model.policy.composite import CompositeVideoPolicy, resize_frames

logger = logging.getLogger(__name__)


@dataclass
class ConnectorAlignmentConfig:
    steps: int = 400
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


@dataclass(frozen=True)
class DescribedVideo:
    """A video's sampled frames (uint8 (T, H, W, 3)) with their true times, and its annotated moments
    as (start, end, description)."""

    frames: np.ndarray
    timestamps: np.ndarray
    moments: Sequence[tuple[float, float, str]]


@dataclass(frozen=True)
class AlignmentReport:
    frames: int  # frames inside at least one moment (the ones fitted)
    descriptions: int
    loss_before: float
    loss_after: float
    cosine_before: float
    cosine_after: float


def description_embeddings(tokenizer, embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """One (H,) target per text: the IDF-weighted mean of its tokens' input embeddings (words most
    descriptions share, like "a" or "background", weigh little or nothing), rescaled to the vocabulary's mean
    embedding norm so projected frames have the scale of ordinary tokens."""
    token_lists = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    if any(not tokens for tokens in token_lists):
        empty = next(t for t, tokens in zip(texts, token_lists, strict=True) if not tokens)
        raise ValueError(f"a description has no tokens: {empty!r}")
    document_frequency = Counter(t for tokens in token_lists for t in set(tokens))
    count = len(token_lists)
    typical_norm = embeddings.norm(dim=-1).mean()
    out = []
    for tokens in token_lists:
        # A word in every description says nothing about which one a frame shows: weight 0. A text
        # made only of such words falls back to its plain mean.
        weights = torch.tensor([math.log((1 + count) / (1 + document_frequency[t])) for t in tokens])
        if float(weights.sum()) <= 0:
            weights = torch.ones(len(tokens))
        mean = (weights[:, None] * embeddings[tokens]).sum(0) / weights.sum()
        out.append(mean * (typical_norm / mean.norm().clamp_min(1e-12)))
    return torch.stack(out)


def align_connector(
    policy: CompositeVideoPolicy, videos: Iterable[DescribedVideo], config: ConnectorAlignmentConfig
) -> AlignmentReport:
    """Fit ``policy.projector`` in place; every other weight is left as it is."""
    features, frame_texts, index_of = [], [], {}
    for video in videos:
        times = np.asarray(video.timestamps, dtype=np.float64)
        if len(times) != len(video.frames):
            raise ValueError(f"{len(video.frames)} frames but {len(times)} timestamps")
        covering = [[text for start, end, text in video.moments if start <= t <= end] for t in times.tolist()]
        keep = [i for i, c in enumerate(covering) if c]
        if not keep:
            continue
        frames = resize_frames(np.asarray(video.frames)[keep], policy.config.frame_size)
        with torch.no_grad():
            features.append(policy.frame_features(frames.to(policy.device)).float())
        for i in keep:
            frame_texts.append([index_of.setdefault(text, len(index_of)) for text in covering[i]])
    if not features:
        raise ValueError(
            "no sampled frame falls inside an annotated moment: nothing to align the connector on"
        )
    texts = sorted(index_of, key=index_of.get)
    x = torch.cat(features)
    embeddings = policy.get_input_embeddings().weight.detach().float().cpu()
    described = description_embeddings(policy.tokenizer, embeddings, texts)
    # A frame inside several moments is described by all of them.
    y = torch.stack([described[ids].mean(0) for ids in frame_texts])

    projector = policy.projector
    device = next(projector.parameters()).device
    dtype = next(projector.parameters()).dtype
    x, y = x.to(device, dtype), y.to(device, dtype)
    scale = float(y.pow(2).mean())

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            pred = projector(x)
            loss = float((pred - y).pow(2).mean()) / scale
            cosine = float(torch.nn.functional.cosine_similarity(pred, y, dim=-1).mean())
        return loss, cosine

    loss_before, cosine_before = measure()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(projector.parameters(), lr=config.lr)
    was_training = projector.training
    projector.train()
    for _ in range(config.steps):
        rows = torch.randint(len(x), (min(config.batch_size, len(x)),), generator=generator).to(device)
        loss = (projector(x[rows]) - y[rows]).pow(2).mean() / scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    projector.train(was_training)
    loss_after, cosine_after = measure()
    report = AlignmentReport(len(x), len(texts), loss_before, loss_after, cosine_before, cosine_after)
    logger.info("connector alignment: %s", report)
    return report
