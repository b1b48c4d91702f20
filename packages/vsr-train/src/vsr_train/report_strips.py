"""Thumbnail strips for report.html: a few frames of a video, decoded with their true timestamps,
side by side in one small JPEG (one file per video however many cards show it)."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vsr_model.video import FrameSampling, VideoClip


class ClipSource(Protocol):
    """What the report needs of a corpus (vsr_model.corpus.Corpus is one)."""

    def clip(self, video_id: str, sampling: FrameSampling | None = None) -> VideoClip: ...


@dataclass(frozen=True)
class Strip:
    """One video's strip: its file name, the frames' true times (seconds), each thumbnail's width in
    pixels, the video's duration and the file's size in bytes."""

    file: str
    timestamps: tuple[float, ...]
    thumb_width: int
    duration: float
    size: int


class StripBook:
    """Strips rendered on first use and kept in memory; `write` puts the strips requested since the
    last `write` / `drop` into `folder` (the report keeps a card, and its new strips, only if they fit
    its size cap)."""

    def __init__(self, corpus: ClipSource, folder: Path, per_strip: int, height: int, quality: int = 70):
        self.corpus, self.folder, self.height, self.quality = corpus, folder, height, quality
        self.rendered: dict[str, tuple[Strip, bytes]] = {}
        self.written: set[str] = set()
        self.requested: set[str] = set()
        # Decode small (about twice the thumbnail) and exactly N frames spread over the video.
        self.sampling = FrameSampling(
            fps=1000.0, max_frames=per_strip, min_frames=per_strip, max_pixels=max(64, 8 * height * height)
        )

    def get(self, video_id: str) -> Strip:
        if video_id not in self.rendered:
            self.rendered[video_id] = self._render(video_id)
        self.requested.add(video_id)
        return self.rendered[video_id][0]

    def pending_bytes(self) -> int:
        """Bytes the strips requested since the last `write` or `drop` would add."""
        return sum(self.rendered[v][0].size for v in self.requested - self.written)

    def write(self) -> None:
        for video_id in sorted(self.requested - self.written):
            strip, data = self.rendered[video_id]
            (self.folder / strip.file).write_bytes(data)
            self.written.add(video_id)
        self.requested.clear()

    def drop(self) -> None:
        self.requested.clear()

    def _render(self, video_id: str) -> tuple[Strip, bytes]:
        from PIL import Image

        try:
            clip = self.corpus.clip(video_id, self.sampling)
        except KeyError as exc:
            raise ValueError(f"video {video_id!r} of a trace is not in the report's corpus") from exc
        frames = np.asarray(clip.frames)
        width = max(8, round(frames.shape[2] * self.height / frames.shape[1]))
        thumbs = [np.asarray(Image.fromarray(f).resize((width, self.height), Image.BILINEAR)) for f in frames]
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate(thumbs, axis=1)).save(buffer, "JPEG", quality=self.quality)
        slug = re.sub(r"[^A-Za-z0-9_-]", "_", video_id)[:40]
        digest = hashlib.sha1(video_id.encode()).hexdigest()[:8]
        data = buffer.getvalue()
        times = tuple(float(t) for t in clip.timestamps)
        return Strip(f"{slug}-{digest}.jpg", times, width, float(clip.duration), len(data)), data
