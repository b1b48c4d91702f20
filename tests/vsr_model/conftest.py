"""Shared fixtures for vsr_model tests: tiny generated videos and a tiny synthetic benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vsr_model.video import write_video


def make_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Frames whose mean brightness encodes the frame index (frame k has value ~ 4k + noise)."""
    rng = np.random.default_rng(seed)
    base = (np.arange(num_frames, dtype=np.int32) * 4 % 200 + 20)[:, None, None, None]
    noise = rng.integers(0, 8, size=(num_frames, height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """A 6 s, 10 fps, 64x48 mp4."""
    return write_video(tmp_path / "tiny.mp4", make_frames(60), fps=10)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic VCMR benchmark (a few videos per split), generated once per test session."""
    from vsr_model.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(num_train=6, num_val=2, num_test=4, seed=3, height=64, width=80), root)
    return root
