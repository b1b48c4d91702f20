"""Family 2: a dual encoder. Frozen text encoder (MiniLM, mean pooling) for queries; frozen frame
encoder (EfficientNet-Lite0) + a learned temporal pooler / projector into the text space for videos.
The pooler is the only trained part (`vsr engine fit`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vsr_model.backbones import (
    MINILM,
    FrameEncoder,
    FrameEncoderConfig,
    TextBackbone,
    load_frame_encoder,
    load_text_encoder,
    tiny_text_encoder,
)
from vsr_model.config import config_from_dict
from vsr_model.engine.base import SearchEngine, register_family
from vsr_model.engine.query import BertQueryEncoder
from vsr_model.fileio import atomic_write
from vsr_model.video import FrameSampling, VideoClip

RANDOM_BERT = "random-bert"


@dataclass
class TextEncoderConfig:
    """name: "minilm" (packaged weights), "random-bert" (tiny random, tests), or an HF path/name."""

    name: str = MINILM
    max_length: int = 64
    hidden_size: int = 32  # random-bert only
    num_layers: int = 2  # random-bert only
    num_heads: int = 4  # random-bert only
    seed: int = 0


@dataclass
class PoolerConfig:
    hidden_size: int = 384
    num_layers: int = 1
    num_heads: int = 4
    num_queries: int = 4  # learned attention-pooling queries; several let one vector hold several events
    time_features: int = 8  # sinusoidal features of the frame's relative time in the video
    dropout: float = 0.1


@dataclass
class DualEncoderConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    frames: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    sampling: FrameSampling = field(default_factory=lambda: FrameSampling(fps=1.0, max_frames=32))
    pooler: PoolerConfig = field(default_factory=PoolerConfig)
    metric: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_features(timestamps: torch.Tensor, duration: torch.Tensor, count: int) -> torch.Tensor:
    """(B, T) seconds -> (B, T, count) sin/cos features of the relative time t / duration."""
    rel = (timestamps / duration.clamp_min(1e-6)[:, None]).clamp(0, 1)
    freqs = torch.pi * 2.0 ** torch.arange(count // 2, device=rel.device, dtype=rel.dtype)
    angles = rel[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TemporalPooler(nn.Module):
    """Frame features (B, T, F) + times -> video embedding (B, D): project, add time features,
    a small transformer over time, attention pooling with learned queries, projector to D."""

    def __init__(self, feature_dim: int, embed_dim: int, cfg: PoolerConfig):
        super().__init__()
        h = cfg.hidden_size
        self.cfg = cfg
        self.input = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, h))
        self.time = nn.Linear(cfg.time_features, h)
        layer = nn.TransformerEncoderLayer(
            h, cfg.num_heads, 2 * h, cfg.dropout, batch_first=True, norm_first=True
        )
        self.temporal = (
            nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
            if cfg.num_layers
            else None
        )
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, h) / math.sqrt(h))
        self.attend = nn.MultiheadAttention(h, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.output = nn.Sequential(
            nn.LayerNorm(cfg.num_queries * h), nn.Linear(cfg.num_queries * h, embed_dim)
        )

    def forward(
        self, features: torch.Tensor, timestamps: torch.Tensor, duration: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """features (B, T, F), timestamps (B, T) s, duration (B,), mask (B, T) True = real frame."""
        x = self.input(features) + self.time(time_features(timestamps, duration, self.cfg.time_features))
        pad = ~mask
        if self.temporal is not None:
            x = self.temporal(x, src_key_padding_mask=pad)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        pooled, _ = self.attend(q, x, x, key_padding_mask=pad, need_weights=False)
        return F.normalize(self.output(pooled.flatten(1)), dim=-1)


@dataclass
class FrameFeatures:
    """Frozen frame-encoder output for one clip: what the pooler trains on (cacheable)."""

    features: torch.Tensor  # (T, F)
    timestamps: torch.Tensor  # (T,) seconds
    duration: float


def collate_features(
    items: Sequence[FrameFeatures],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest clip: features (B, T, F), timestamps (B, T), duration (B,), mask (B, T)."""
    if not items:
        raise ValueError("no clips to encode")
    t_max = max(int(i.features.shape[0]) for i in items)
    f = items[0].features.shape[1]
    feats = torch.zeros(len(items), t_max, f)
    times = torch.zeros(len(items), t_max)
    mask = torch.zeros(len(items), t_max, dtype=torch.bool)
    for b, item in enumerate(items):
        t = item.features.shape[0]
        if t == 0:
            raise ValueError("a clip has no frames")
        feats[b, :t], times[b, :t], mask[b, :t] = item.features, item.timestamps, True
    duration = torch.tensor([i.duration for i in items], dtype=torch.float32)
    return feats, times, duration, mask


def _build_text(cfg: TextEncoderConfig) -> TextBackbone:
    if cfg.name == RANDOM_BERT:
        return tiny_text_encoder(cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.seed)
    return load_text_encoder(cfg.name)


@register_family
class DualEncoderEngine(SearchEngine):
    family = "dual_encoder"

    def __init__(self, config: DualEncoderConfig | None = None, *, text: TextBackbone | None = None,
                 frames: FrameEncoder | None = None):  # fmt: skip
        self.config = config or DualEncoderConfig()
        self.sampling = self.config.sampling
        tokenizer, model = text or _build_text(self.config.text)
        self.query_encoder = BertQueryEncoder(tokenizer, model, self.config.text.max_length)
        self.frame_encoder = frames or load_frame_encoder(self.config.frames)
        hidden = self.query_encoder.hidden_size
        # D is the text encoder's width: queries are the frozen encoder's pooled output, not projected
        super().__init__(
            embed_dim=int(model.config.hidden_size), query_input_dim=hidden, metric=self.config.metric
        )
        torch.manual_seed(self.config.text.seed)
        self.pooler = TemporalPooler(self.frame_encoder.feature_dim, self.embed_dim, self.config.pooler)
        self.pooler.eval()

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> DualEncoderEngine:
        return cls(config_from_dict(DualEncoderConfig, values, "dual_encoder engine"))

    @property
    def device(self) -> torch.device:
        return next(self.pooler.parameters()).device

    def to(self, device: str | torch.device) -> DualEncoderEngine:
        self.query_encoder.to(device)
        self.frame_encoder.to(device)
        self.pooler.to(device)
        return self

    def encode_query(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor:
        if soft_tokens is not None and soft_tokens.requires_grad:
            return self.query_encoder(texts, soft_tokens)
        with torch.no_grad():
            return self.query_encoder(texts, soft_tokens)

    @torch.no_grad()
    def frame_features(self, clip: VideoClip) -> FrameFeatures:
        return FrameFeatures(
            self.frame_encoder(clip.frames).cpu(), torch.from_numpy(clip.timestamps).float(), clip.duration
        )

    def pool(self, items: Sequence[FrameFeatures]) -> torch.Tensor:
        """Video embeddings (B, D) from precomputed frame features (gradients flow into the pooler)."""
        feats, times, duration, mask = (t.to(self.device) for t in collate_features(items))
        return self.pooler(feats, times, duration, mask)

    @torch.no_grad()
    def encode_videos(self, clips: Sequence[VideoClip]) -> torch.Tensor:
        if not all(isinstance(c, VideoClip) for c in clips):
            raise TypeError("encode_videos takes VideoClip objects (see vsr_model.video.decode_video)")
        self.pooler.eval()
        return self.pool([self.frame_features(c) for c in clips]).float().cpu()

    # --- persistence -----------------------------------------------------------------------
    def _save_model(self, directory: Path) -> dict[str, Any]:
        atomic_write(
            directory / "pooler.safetensors", lambda f: f.write(_safetensors_bytes(self.pooler.state_dict()))
        )
        files = {"pooler": "pooler.safetensors"}
        if self.config.text.name == RANDOM_BERT:  # random weights are part of the engine
            atomic_write(directory / "text_encoder.safetensors",
                         lambda f: f.write(_safetensors_bytes(self.query_encoder.model.state_dict())))  # fmt: skip
            files["text_encoder"] = "text_encoder.safetensors"
        if self.config.frames.weights == "random":
            atomic_write(directory / "frame_encoder.safetensors",
                         lambda f: f.write(_safetensors_bytes(self.frame_encoder.network.state_dict())))  # fmt: skip
            files["frame_encoder"] = "frame_encoder.safetensors"
        return {"config": self.config.to_dict(), "files": files}

    @classmethod
    def _load_model(cls, directory: Path, meta: dict[str, Any]) -> DualEncoderEngine:
        engine = cls(config_from_dict(DualEncoderConfig, meta["config"], str(directory)))
        files = meta["files"]
        engine.pooler.load_state_dict(load_file(directory / files["pooler"]))
        if "text_encoder" in files:
            engine.query_encoder.model.load_state_dict(load_file(directory / files["text_encoder"]))
        if "frame_encoder" in files:
            engine.frame_encoder.network.load_state_dict(load_file(directory / files["frame_encoder"]))
        return engine


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in state.items()})
