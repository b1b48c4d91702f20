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


def tiny_dual_encoder_config():
    """A dual-encoder config of tiny random models (random BERT text side, 32 px random EfficientNet)."""
    from vsr_model.backbones import FrameEncoderConfig
    from vsr_model.engine.dual import DualEncoderConfig, PoolerConfig, TextEncoderConfig
    from vsr_model.video import FrameSampling

    return DualEncoderConfig(
        text=TextEncoderConfig(name="random-bert", hidden_size=32, num_layers=2, num_heads=4),
        frames=FrameEncoderConfig(weights="random", image_size=32),
        sampling=FrameSampling(fps=1.0, max_frames=8),
        pooler=PoolerConfig(hidden_size=32, num_heads=4, num_queries=2, dropout=0.0),
    )


@pytest.fixture
def tiny_engine():
    from vsr_model.engine.dual import DualEncoderEngine

    return DualEncoderEngine(tiny_dual_encoder_config())
