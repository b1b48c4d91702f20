"""Frames -> Qwen-VL vision patches without torchvision, keeping each temporal patch's true time.

The flat patch layout is the one the Qwen-VL vision towers were trained on: rows ordered by
(temporal patch, merged row, merged column, row within merge, column within merge), each row holding
(channel, frame within temporal patch, pixel row, pixel column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PatchLayout:
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass
class FramePatches:
    pixel_values: torch.Tensor  # (grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch) float32
    grid_t: int
    grid_h: int
    grid_w: int
    group_times: list[float]  # mean true time (s) of the frames in each temporal patch
    seconds_per_group: float  # mean spacing between temporal patches, for Qwen2.5-VL's temporal RoPE


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Nearest size with both sides multiples of `factor` and area within [min_pixels, max_pixels]."""
    if min(height, width) < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame aspect ratio above 200 ({height}x{width})")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def patchify_frames(frames: np.ndarray, timestamps: np.ndarray, layout: PatchLayout) -> FramePatches:
    """uint8 (T, H, W, 3) frames with true times (T,) -> flat patches, grid and per-group times."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if timestamps.shape != (frames.shape[0],):
        raise ValueError(f"need one timestamp per frame: {timestamps.shape} for {frames.shape[0]} frames")
    t_patch, p, m = layout.temporal_patch_size, layout.patch_size, layout.merge_size
    height, width = smart_resize(
        frames.shape[1], frames.shape[2], layout.factor, layout.min_pixels, layout.max_pixels
    )
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if (height, width) != tuple(x.shape[-2:]):
        x = torch.nn.functional.interpolate(
            x, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        )
    x = x.clamp_(0, 255).div_(255.0)
    mean = torch.tensor(layout.mean).view(1, 3, 1, 1)
    std = torch.tensor(layout.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    times = np.asarray(timestamps, dtype=np.float64)
    if pad := -x.shape[0] % t_patch:
        # Pad by repeating the last frame (and its time), as the released processors do.
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        times = np.concatenate([times, np.repeat(times[-1:], pad)])
    grid_t, grid_h, grid_w = x.shape[0] // t_patch, height // p, width // p
    patches = x.reshape(grid_t, t_patch, 3, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, 3 * t_patch * p * p).contiguous()
    group_times = times.reshape(grid_t, t_patch).mean(axis=1)
    spacing = float(np.diff(group_times).mean()) if grid_t > 1 else float(t_patch)
    return FramePatches(flat, grid_t, grid_h, grid_w, group_times.tolist(), max(spacing, 1e-3))
