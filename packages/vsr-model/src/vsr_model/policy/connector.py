"""Connector alignment: fit the composite policy's freshly initialised frame connector before Stage 1.

LLaVA's first stage trains its projector on image captions with the language model frozen. Here each
sampled frame is described by words, one per frame token:

- with a teacher that knows what a frame shows (the synthetic benchmark's ground truth,
  `vsr_model.data.teacher.SyntheticTeacher.frame_words`): the size, colour, object, action and
  background of the event on screen ("nothing" between events);
- otherwise from the annotations: the most specific words (highest IDF) of the queries whose moments
  cover the frame, in their order ("nothing" where no moment covers it).

A `vocabulary` connector learns, per frame token, a distribution over the words seen in that token's
place (cross-entropy); an `mlp` connector regresses its tokens onto those words' input embeddings
(cosine). Either way no forward pass through the language model is needed, so the fit takes a minute on
a CPU, and Stage 1 starts from frame tokens that read like the words describing the frame.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vsr_model.policy.composite import CompositeVideoPolicy, resize_frames

logger = logging.getLogger(__name__)

NOTHING = "nothing"


@dataclass
class ConnectorAlignmentConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 256
    # Share of the videos held out to measure the fit (their frames are not trained on).
    held_out: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0) or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0 <= self.held_out < 1:
            raise ValueError(f"held_out must lie in [0, 1), got {self.held_out}")


@dataclass(frozen=True)
class DescribedVideo:
    """A video's sampled frames (uint8 (T, H, W, 3)) with their true times, its annotated moments as
    (start, end, description), and optionally each frame's words from a teacher."""

    frames: np.ndarray
    timestamps: np.ndarray
    moments: Sequence[tuple[float, float, str]]
    frame_words: Sequence[Sequence[str]] | None = None


@dataclass(frozen=True)
class AlignmentReport:
    frames: int
    held_out_frames: int
    words_per_token: list[int]
    loss_before: float
    loss_after: float
    # Held-out share of frame tokens whose best word (argmax, or nearest embedding) is the target word.
    held_out_accuracy: list[float]


def caption_words(texts: Sequence[str], count: int, idf: dict[str, float]) -> list[str]:
    """The `count` most specific words (highest IDF, first occurrence kept) of the texts, in order,
    padded with "nothing"."""
    words = [w.strip(".,;:!?\"'()").lower() for text in texts for w in text.split()]
    words = [w for w in dict.fromkeys(words) if w]
    best = sorted(words, key=lambda w: -idf.get(w, 0.0))[:count]
    return [w for w in words if w in best] + [NOTHING] * (count - len(best))


def _idf(videos: Sequence[DescribedVideo]) -> dict[str, float]:
    documents = [
        {w.strip(".,;:!?\"'()").lower() for w in text.split()} for v in videos for _, _, text in v.moments
    ]
    frequency = Counter(w for d in documents for w in d)
    return {w: math.log((1 + len(documents)) / (1 + n)) for w, n in frequency.items()}


def frame_targets(videos: Sequence[DescribedVideo], count: int) -> list[list[list[str]]]:
    """Per video, per frame, `count` target words (the teacher's, else caption words)."""
    idf = _idf(videos) if any(v.frame_words is None for v in videos) else {}
    out = []
    for video in videos:
        if video.frame_words is not None:
            if len(video.frame_words) != len(video.timestamps):
                raise ValueError(f"{len(video.frame_words)} word lists for {len(video.timestamps)} frames")
            rows = [list(words) for words in video.frame_words]
            bad = [w for w in rows if len(w) != count]
            if bad:
                raise ValueError(
                    f"a frame has {len(bad[0])} teacher words, the connector makes {count} tokens"
                )
            out.append(rows)
            continue
        rows = []
        for t in np.asarray(video.timestamps, dtype=np.float64).tolist():
            covering = [text for start, end, text in video.moments if start <= t <= end]
            rows.append(caption_words(covering, count, idf) if covering else [NOTHING] * count)
        out.append(rows)
    return out


def _features(policy: CompositeVideoPolicy, video: DescribedVideo) -> torch.Tensor:
    frames = resize_frames(np.asarray(video.frames), policy.config.frame_size).to(policy.device)
    with torch.no_grad():
        features = policy.frame_features(frames).float()
    if policy.config.temporal_context:
        from vsr_model.policy.composite import with_motion

        features = with_motion(features, [features.shape[0]])
    return features


def align_connector(
    policy: CompositeVideoPolicy, videos: Iterable[DescribedVideo], config: ConnectorAlignmentConfig
) -> AlignmentReport:
    """Fit ``policy.projector`` (its connector) in place; every other weight is left as it is."""
    videos = list(videos)
    if not videos:
        raise ValueError("no videos to align the connector on")
    k = policy.config.tokens_per_frame
    targets = frame_targets(videos, k)
    rng = np.random.default_rng(config.seed)
    held = set(rng.choice(len(videos), size=int(len(videos) * config.held_out), replace=False).tolist())
    feats, words, is_held = [], [], []
    for i, (video, rows) in enumerate(zip(videos, targets, strict=True)):
        feats.append(_features(policy, video))
        words.extend(rows)
        is_held += [i in held] * len(rows)
    x = torch.cat(feats)
    held_mask = torch.tensor(is_held)
    vocab = [sorted({row[j] for row in words}) for j in range(k)]
    if policy.config.connector == "vocabulary":
        policy.set_connector_words(vocab)
    y = torch.tensor([[vocab[j].index(row[j]) for j in range(k)] for row in words])
    connector = policy.projector
    device = next(connector.parameters()).device
    dtype = next(connector.parameters()).dtype
    x, y = x.to(device, dtype), y.to(device)
    tables = _word_tables(policy, vocab)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        if policy.config.connector == "vocabulary":
            logits = connector.slot_logits(x[rows])
            return sum(F.cross_entropy(lg, y[rows, j]) for j, lg in enumerate(logits)) / k
        tokens = connector(x[rows]) - connector.slot
        wanted = torch.stack([tables[j][y[rows, j]] for j in range(k)], dim=1)
        return (1 - F.cosine_similarity(tokens, wanted, dim=-1)).mean()

    def accuracy(rows: torch.Tensor) -> list[float]:
        if rows.numel() == 0:
            return [math.nan] * k
        with torch.no_grad():
            if policy.config.connector == "vocabulary":
                best = [lg.argmax(-1) for lg in connector.slot_logits(x[rows])]
            else:
                tokens = connector(x[rows]) - connector.slot
                best = [
                    (F.normalize(tokens[:, j], dim=-1) @ F.normalize(tables[j], dim=-1).T).argmax(-1)
                    for j in range(k)
                ]
        return [float((b == y[rows, j]).float().mean()) for j, b in enumerate(best)]

    train_rows = (~held_mask).nonzero().flatten().to(device)
    held_rows = held_mask.nonzero().flatten().to(device)
    connector.eval()
    with torch.no_grad():
        loss_before = float(loss_of(train_rows))
    optimizer = torch.optim.AdamW(connector.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    connector.train()
    for _ in range(config.epochs):
        order = train_rows[torch.randperm(len(train_rows), generator=generator).to(device)]
        for start in range(0, len(order), config.batch_size):
            loss = loss_of(order[start : start + config.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    connector.eval()
    with torch.no_grad():
        loss_after = float(loss_of(train_rows))
    report = AlignmentReport(
        frames=len(train_rows),
        held_out_frames=len(held_rows),
        words_per_token=[len(v) for v in vocab],
        loss_before=loss_before,
        loss_after=loss_after,
        held_out_accuracy=accuracy(held_rows),
    )
    logger.info("connector alignment: %s", report)
    return report


def _word_tables(policy: CompositeVideoPolicy, vocab: list[list[str]]) -> list[torch.Tensor]:
    """Per frame token, (words, H) input embeddings of its words (mean over each word's pieces)."""
    weight = policy.get_input_embeddings().weight.detach()
    ids = policy.word_token_ids(vocab)
    return [torch.stack([weight[i].mean(0) for i in slot]).float() for slot in ids]
