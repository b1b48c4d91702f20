"""Video decoding with decord, frame sampling with true per-frame timestamps, and an on-disk frame cache.

Every sampled frame carries the presentation time decord reports for it, so a long video sampled
sparsely (max_frames caps the count) keeps correct times; nothing assumes "frame k is at k seconds".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vsr_model.fileio import atomic_save_npy, atomic_write_json

logger = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded (corrupt, truncated, unsupported)."""


@dataclass
class VideoClip:
    """Sampled frames of one video.

    frames: uint8 (T, H, W, 3) RGB; timestamps: float64 (T,) seconds from the start of the video
    (strictly increasing); duration: seconds; fps: the source's average frame rate.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    duration: float
    fps: float
    video_id: str | None = None

    def __post_init__(self) -> None:
        frames, ts = self.frames, self.timestamps
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise TypeError(
                f"VideoClip.frames must be a uint8 numpy array, got {getattr(frames, 'dtype', type(frames))}"
            )
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"VideoClip.frames must have shape (T, H, W, 3), got {frames.shape}")
        ts = np.asarray(ts, dtype=np.float64)
        if ts.shape != (frames.shape[0],):
            raise ValueError(f"VideoClip.timestamps must have shape ({frames.shape[0]},), got {ts.shape}")
        if not np.all(np.isfinite(ts)):
            raise ValueError("VideoClip.timestamps contain NaN or infinity")
        if ts.size > 1 and not np.all(np.diff(ts) > 0):
            raise ValueError("VideoClip.timestamps must be strictly increasing")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"VideoClip.duration must be a positive number, got {self.duration}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"VideoClip.fps must be a positive number, got {self.fps}")
        self.timestamps = ts

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class FrameSampling:
    """How frames are picked from a video.

    fps: target sampling rate (frames per second of video); max_frames: cap on the count (when the
    video is longer than max_frames / fps, frames are spread uniformly over the whole video, so the
    effective rate drops and the timestamps say so); min_frames: at least this many (short videos);
    max_pixels: decode at a resolution with H * W <= max_pixels, aspect ratio kept (None: native).
    """

    fps: float = 1.0
    max_frames: int = 64
    min_frames: int = 1
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"FrameSampling.fps must be positive, got {self.fps}")
        if self.max_frames < 1 or self.min_frames < 1 or self.min_frames > self.max_frames:
            raise ValueError(
                f"FrameSampling needs 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
            )
        if self.max_pixels is not None and self.max_pixels < 64:
            raise ValueError(f"FrameSampling.max_pixels must be >= 64 or None, got {self.max_pixels}")

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def sample_times(duration: float, sampling: FrameSampling) -> np.ndarray:
    """Target times (seconds) at the centres of equal bins covering [0, duration)."""
    count = math.floor(duration * sampling.fps + 1e-9)
    count = min(max(count, sampling.min_frames), sampling.max_frames)
    return (np.arange(count, dtype=np.float64) + 0.5) * (duration / count)


def nearest_frames(frame_starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame showing each time (the last frame starting at or before it), deduplicated."""
    idx = np.searchsorted(frame_starts, times, side="right") - 1
    idx = np.clip(idx, 0, len(frame_starts) - 1)
    return np.unique(idx)


def fit_max_pixels(height: int, width: int, max_pixels: int | None) -> tuple[int, int]:
    """Largest (h, w) with the same aspect ratio and h * w <= max_pixels (even sizes for codecs)."""
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    h = max(2, int(height * scale) // 2 * 2)
    w = max(2, int(width * scale) // 2 * 2)
    return h, w


def _open(path: Path, height: int = -1, width: int = -1) -> Any:
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), height=height, width=width, num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError subclasses
        raise VideoDecodeError(f"{path}: cannot open video: {exc}") from exc


def decode_video(
    path: str | Path, sampling: FrameSampling | None = None, video_id: str | None = None
) -> VideoClip:
    """Decode `path` with decord and return the sampled frames with their true timestamps."""
    sampling = sampling or FrameSampling()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    reader = _open(path)
    n = len(reader)
    if n == 0:
        raise VideoDecodeError(f"{path}: the video has no frames")
    first = reader[0].shape
    h, w = fit_max_pixels(int(first[0]), int(first[1]), sampling.max_pixels)
    if (h, w) != (first[0], first[1]):
        reader = _open(path, height=h, width=w)
    try:
        spans = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        fps = float(reader.get_avg_fps())
        duration = float(max(spans[-1, 1], spans[-1, 0] + 1.0 / fps))
        indices = nearest_frames(spans[:, 0], sample_times(duration, sampling))
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"{path}: decoding failed: {exc}") from exc
    if frames.shape[0] != len(indices):
        raise VideoDecodeError(f"{path}: asked for {len(indices)} frames, decoder returned {frames.shape[0]}")
    return VideoClip(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        # decord reports float32 seconds; round away the float32 noise (1 us is far below a frame)
        timestamps=np.round(spans[indices, 0], 6),
        duration=duration,
        fps=fps,
        video_id=video_id,
    )


@dataclass
class FrameCache:
    """Decoded clips on disk as `<key>.npy` (frames) + `<key>.json` (timestamps, duration, fps, source).

    The key hashes the video's resolved path, size, modification time and the sampling settings, so a
    changed file or different sampling never reads a stale entry. Entries are written atomically
    (frames first, metadata last; an entry counts only once its metadata exists).
    """

    root: Path
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path, sampling: FrameSampling) -> str:
        st = path.stat()
        ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, sampling.key()])
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[Path, Path]:
        sub = self.root / key[:2]
        return sub / f"{key}.npy", sub / f"{key}.json"

    def get(self, path: str | Path, sampling: FrameSampling, video_id: str | None = None) -> VideoClip:
        """The clip for `path` under `sampling`, decoded once and read from disk afterwards."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        key = self.key(path, sampling)
        frames_path, meta_path = self._paths(key)
        if meta_path.is_file():
            clip = self._load(frames_path, meta_path, video_id)
            if clip is not None:
                self.hits += 1
                return clip
        self.misses += 1
        clip = decode_video(path, sampling, video_id=video_id)
        atomic_save_npy(frames_path, clip.frames)
        meta = {
            "source": str(path.resolve()),
            "sampling": asdict(sampling),
            "timestamps": clip.timestamps.tolist(),
            "duration": clip.duration,
            "fps": clip.fps,
            "shape": list(clip.frames.shape),
        }
        atomic_write_json(meta_path, meta)
        return clip

    def _load(self, frames_path: Path, meta_path: Path, video_id: str | None) -> VideoClip | None:
        """The cached clip, or None (with a warning) when either file is unreadable: torn by a kill,
        truncated, or not what this cache writes; the caller then decodes the video again."""
        try:
            meta = json.loads(meta_path.read_bytes())
            shape = [int(v) for v in meta["shape"]]
            timestamps = np.asarray(meta["timestamps"], dtype=np.float64)
            duration, fps = float(meta["duration"]), float(meta["fps"])
        except (OSError, ValueError, KeyError, TypeError) as exc:  # JSON/Unicode errors are ValueErrors
            logger.warning("frame cache entry %s is unreadable (%s); decoding again", meta_path, exc)
            return None
        try:
            frames = np.load(frames_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("frame cache entry %s is unreadable (%s); decoding again", frames_path, exc)
            return None
        if list(frames.shape) != shape:
            logger.warning(
                "frame cache entry %s has shape %s, expected %s; decoding again",
                frames_path,
                frames.shape,
                shape,
            )
            return None
        return VideoClip(
            frames=np.asarray(frames), timestamps=timestamps, duration=duration, fps=fps, video_id=video_id
        )

    def clear(self) -> None:
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and p.suffix in {".npy", ".json"}:
                os.unlink(p)


# BT.601 limited-range weights (per unit of 8-bit RGB), in 16-bit fixed point.
_Y_WEIGHTS = tuple(round(c / 255.0 * 65536) for c in (65.481, 128.553, 24.966))
_U_WEIGHTS = tuple(round(c / 255.0 * 65536) for c in (-37.797, -74.203, 112.0))
_V_WEIGHTS = tuple(round(c / 255.0 * 65536) for c in (112.0, -93.786, -18.214))


def _fixed_point_mix(rgb: np.ndarray, weights: tuple[int, int, int], offset: int, shift: int) -> np.ndarray:
    """round(offset + sum_c weights[c] * rgb[..., c] / 2^shift), clipped to 0..255, in int32."""
    mixed = rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1] + rgb[..., 2] * weights[2]
    return np.clip((mixed + (offset << shift) + (1 << (shift - 1))) >> shift, 0, 255)


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3), H and W even -> the (H * 3 / 2, W) yuv420p layout PyAV reads: BT.601
    limited range (what decoders assume for untagged H.264), chroma averaged over 2x2 blocks.

    Integer arithmetic only, so the result is the same whatever the array's alignment or the SIMD
    path (PyAV's rgb24 conversion gave different pixels from the same frames run to run)."""
    h, w = frame.shape[:2]
    rgb = frame.astype(np.int32)
    # Chroma from the sum of each 2x2 block (exact), so its weights are scaled by 4 more.
    sums = rgb.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
    y = _fixed_point_mix(rgb, _Y_WEIGHTS, 16, shift=16)
    u = _fixed_point_mix(sums, _U_WEIGHTS, 128, shift=18)
    v = _fixed_point_mix(sums, _V_WEIGHTS, 128, shift=18)
    planes = [p.astype(np.uint8).reshape(-1) for p in (y, u, v)]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) as an H.264 mp4 with PyAV, atomically (temp file + rename).

    H and W must be even (yuv420p). Frame k is presented at k / fps seconds. crf=0 is lossless:
    decoding gives back exactly rgb_to_yuv420p(frame), whatever choices the encoder makes. Lossy
    files are not reproducible bit for bit: x264 occasionally (about 1 encode in 600 here) makes a
    different decision on identical input, which moves decoded pixels by a level.
    """
    import av

    from vsr_model.fileio import atomic_write

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"write_video needs non-empty uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"write_video needs even frame sizes for yuv420p, got {frames.shape[1]}x{frames.shape[2]}"
        )
    if not (math.isfinite(fps) and fps > 0) or abs(fps - round(fps)) > 1e-9:
        raise ValueError(f"write_video needs a positive integer fps, got {fps}")

    def encode(f: Any) -> None:
        with av.open(f, mode="w", format="mp4") as container:
            # Our own colour conversion (PyAV's rgb24 path gave different pixels from the same
            # frames run to run), and one encoder thread to keep lossy encodes as stable as x264 is.
            time_base = Fraction(1, round(fps))
            stream = container.add_stream("libx264", rate=round(fps), options={"crf": str(crf)})
            stream.codec_context.thread_count = 1
            stream.codec_context.time_base = time_base
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for k, frame in enumerate(frames):
                picture = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
                # Explicit timestamps: x264's rate control reads them.
                picture.pts, picture.time_base = k, time_base
                for packet in stream.encode(picture):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(path, encode)
