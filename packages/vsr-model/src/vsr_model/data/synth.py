"""Deterministic synthetic VCMR benchmark: real mp4 videos of scripted events + TVR-style annotations.

Each video has a background and 2-4 non-overlapping events (an object doing an action); between
events only the background shows, so every event's [start, end] is exact (frame boundaries). Every
event yields one query naming size, colour, object, action and background; that 5-tuple is unique
within a split, so each query has exactly one correct (video, moment) in its split's corpus.

Generalisation is measured, not assumed: val / test captions use held-out templates and held-out
paraphrases, and some (colour, object) combinations never occur in train (extra["held_out_combo"]).

Layout written under the output folder:
  videos/<video_id>.mp4          H.264 mp4 at `fps`
  annotations/synth_<split>.jsonl TVR-style (desc_id, desc, vid_name, duration, ts, + attributes)
  videos.jsonl                   one row per video: video_id, split, path (relative), duration, ...
  meta.json                      the config, counts and chance baselines per split
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsr_model.data import synth_world as world
from vsr_model.data.readers import write_tvr_jsonl
from vsr_model.data.records import Moment
from vsr_model.fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DATASET = "synth"
FORMAT_VERSION = 1


@dataclass
class SynthConfig:
    num_train: int = 400
    num_val: int = 50
    num_test: int = 200
    seed: int = 0
    height: int = 128
    width: int = 160
    fps: int = 8
    min_events: int = 2
    max_events: int = 4
    min_event_seconds: float = 2.0
    max_event_seconds: float = 5.0
    min_gap_seconds: float = 0.5
    max_gap_seconds: float = 2.0
    held_out_pair_fraction: float = 0.15  # (colour, object) pairs that never appear in train
    held_out_pair_rate: float = 0.3  # share of val / test events drawn from those pairs

    def __post_init__(self) -> None:
        if min(self.num_train, self.num_val, self.num_test) < 0 or self.num_train + self.num_test == 0:
            raise ValueError("SynthConfig: split sizes must be >= 0 with some train or test videos")
        if self.height % 2 or self.width % 2 or self.height < 32 or self.width < 32:
            raise ValueError(
                f"SynthConfig: height and width must be even and >= 32, got {self.height}x{self.width}"
            )
        if not (1 <= self.min_events <= self.max_events):
            raise ValueError("SynthConfig: need 1 <= min_events <= max_events")
        if not (0 < self.min_event_seconds <= self.max_event_seconds) or not (
            0 <= self.min_gap_seconds <= self.max_gap_seconds
        ):
            raise ValueError("SynthConfig: event and gap lengths must be ordered and positive")
        if self.fps < 1:
            raise ValueError("SynthConfig: fps must be >= 1")
        if not (0 <= self.held_out_pair_fraction < 1 and 0 <= self.held_out_pair_rate <= 1):
            raise ValueError("SynthConfig: held-out fractions must be in [0, 1)")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}


PRESETS: dict[str, dict[str, int]] = {
    "ci": {"num_train": 8, "num_val": 2, "num_test": 6},
    "small": {"num_train": 80, "num_val": 20, "num_test": 50},
    "medium": {"num_train": 400, "num_val": 50, "num_test": 200},
    "large": {"num_train": 3000, "num_val": 300, "num_test": 1000},
}


@dataclass
class VideoPlan:
    video_id: str
    split: str
    background: str
    num_frames: int
    events: list[world.EventSpec]
    queries: list[Moment] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"videos/{self.video_id}.mp4"


def held_out_pairs(config: SynthConfig) -> frozenset[tuple[str, str]]:
    pairs = [(c, o) for c in world.COLORS for o in world.OBJECTS]
    rng = np.random.default_rng([config.seed, 7919])
    count = round(config.held_out_pair_fraction * len(pairs))
    chosen = rng.choice(len(pairs), size=count, replace=False)
    return frozenset(pairs[i] for i in sorted(chosen.tolist()))


def _seconds_to_frames(rng: np.random.Generator, lo: float, hi: float, fps: int) -> int:
    return max(1, round(rng.uniform(lo, hi) * fps))


def _start_position(rng: np.random.Generator, action: str, obj: str) -> tuple[float, float, float]:
    x, y = rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.65)
    if action == "move_right":
        x = rng.uniform(0.2, 0.32)
    elif action == "move_left":
        x = rng.uniform(0.68, 0.8)
    elif action == "move_up":
        y = rng.uniform(0.7, 0.76)
    elif action == "move_down":
        y = rng.uniform(0.24, 0.3)
    angle = rng.uniform(0, 2 * math.pi) if obj in world.SHAPES else 0.0
    return float(x), float(y), float(angle)


def _draw_event_identity(
    rng: np.random.Generator,
    split: str,
    background: str,
    hidden: frozenset,
    hidden_rate: float,
    used: set,
    max_tries: int = 2000,
) -> tuple[str, str, str, str, bool]:
    """Draw (size, colour, object, action) not yet used with this background in this split."""
    colors, objects = list(world.COLORS), list(world.OBJECTS)
    seen_pairs = [(c, o) for c in colors for o in objects if (c, o) not in hidden]
    hidden_pairs = sorted(hidden)
    for _ in range(max_tries):
        from_hidden = split != "train" and hidden_pairs and rng.random() < hidden_rate
        pairs = hidden_pairs if from_hidden else seen_pairs
        color, obj = pairs[rng.integers(len(pairs))]
        actions = [a for a in world.ACTIONS if not (a == "spin" and obj in world.ROTATION_INVARIANT)]
        action = actions[rng.integers(len(actions))]
        size = ("small", "large")[rng.integers(2)]
        key = (size, color, obj, action, background)
        if key not in used:
            used.add(key)
            return size, color, obj, action, bool(from_hidden)
    raise ValueError(
        f"synthetic {split} split: could not find an unused (size, colour, object, action, background) "
        f"after {max_tries} tries; the attribute space is exhausted for this many videos"
    )


def plan_split(config: SynthConfig, split: str, hidden: frozenset[tuple[str, str]]) -> list[VideoPlan]:
    """Decide every video's background, events, timings and captions (cheap; no pixels)."""
    index = SPLITS.index(split)
    rng = np.random.default_rng([config.seed, index])
    used: set[tuple[str, ...]] = set()
    backgrounds = list(world.BACKGROUNDS)
    templates = world.TRAIN_TEMPLATES if split == "train" else world.HELD_OUT_TEMPLATES
    wordings = (0, 1) if split == "train" else (2, 3)
    plans = []
    for v in range(config.split_sizes()[split]):
        video_id = f"synth_{split}_{v:05d}"
        background = backgrounds[rng.integers(len(backgrounds))]
        frame = _seconds_to_frames(rng, config.min_gap_seconds, config.max_gap_seconds, config.fps)
        events, queries = [], []
        for e in range(int(rng.integers(config.min_events, config.max_events + 1))):
            size, color, obj, action, from_hidden = _draw_event_identity(
                rng, split, background, hidden, config.held_out_pair_rate, used
            )
            length = _seconds_to_frames(rng, config.min_event_seconds, config.max_event_seconds, config.fps)
            x, y, angle = _start_position(rng, action, obj)
            ev = world.EventSpec(size, color, obj, action, frame, frame + length, x, y, angle)
            events.append(ev)
            t = int(rng.integers(len(templates)))
            w = wordings[int(rng.integers(2))]
            extra = {"size": size, "color": color, "object": obj, "action": action, "background": background,
                     "template": t, "held_out_combo": from_hidden}  # fmt: skip
            queries.append((e, ev, world.caption(ev, background, templates[t], w), extra))
            frame += length + _seconds_to_frames(
                rng, config.min_gap_seconds, config.max_gap_seconds, config.fps
            )
        duration = frame / config.fps
        plan = VideoPlan(video_id, split, background, frame, events)
        plan.queries = [
            Moment(
                DATASET,
                split,
                f"{video_id}_e{e}",
                text,
                video_id,
                ev.start_frame / config.fps,
                ev.end_frame / config.fps,
                duration,
                extra,
            )
            for e, ev, text, extra in queries
        ]
        plans.append(plan)
    return plans


def _render_and_write(args: tuple[VideoPlan, SynthConfig, str]) -> str:
    from vsr_model.video import write_video

    plan, config, root = args
    out = Path(root) / plan.path
    if not out.is_file():  # written atomically, so an existing file is complete
        frames = world.render_video(
            plan.background, plan.events, plan.num_frames, config.height, config.width, config.fps
        )
        # Lossless, so a seeded benchmark decodes to the same pixels on every run and machine.
        write_video(out, frames, fps=config.fps, crf=0)
    return plan.video_id


def random_span_hit_rate(
    duration: float, start: float, end: float, thresholds: Iterable[float], samples: np.ndarray
) -> dict[float, float]:
    """P(IoU >= m) and E[IoU] for a span with endpoints drawn uniformly in [0, duration]."""
    s = np.minimum(samples[:, 0], samples[:, 1]) * duration
    e = np.maximum(samples[:, 0], samples[:, 1]) * duration
    inter = np.clip(np.minimum(e, end) - np.maximum(s, start), 0, None)
    union = np.maximum(e, end) - np.minimum(s, start)
    iou = inter / np.maximum(union, 1e-9)
    out = {m: float((iou >= m).mean()) for m in thresholds}
    out[-1.0] = float(iou.mean())
    return out


def chance_baselines(moments: list[Moment], num_videos: int, seed: int = 0) -> dict[str, float]:
    """What a random ranker / random span gets: VR R@k = min(k, N)/N; moment and VCMR hit rates."""
    if not moments or num_videos == 0:
        return {}
    samples = np.random.default_rng(seed).random((4000, 2))
    thresholds = (0.3, 0.5, 0.7)
    totals = {m: 0.0 for m in (*thresholds, -1.0)}
    for m in moments:
        for key, value in random_span_hit_rate(m.duration, m.start, m.end, thresholds, samples).items():
            totals[key] += value
    n = len(moments)
    out = {f"vr_r@{k}": min(k, num_videos) / num_videos for k in (1, 5, 10)}
    for m in thresholds:
        out[f"moment_iou>={m}"] = totals[m] / n
        out[f"vcmr_r@1_iou>={m}"] = totals[m] / n / num_videos
    out["moment_miou"] = totals[-1.0] / n
    return out


def generate(
    config: SynthConfig, root: str | Path, workers: int = 1, overwrite: bool = False
) -> dict[str, Any]:
    """Generate (or finish generating) the benchmark under `root`; returns the metadata written."""
    root = Path(root)
    meta_path = root / "meta.json"
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        if existing.get("config") != asdict(config) and not overwrite:
            raise FileExistsError(
                f"{root} holds a synthetic benchmark with a different config; pass overwrite=True or another folder"
            )
    hidden = held_out_pairs(config)
    plans = {split: plan_split(config, split, hidden) for split in SPLITS}
    everything = [p for split in SPLITS for p in plans[split]]
    jobs = [(p, config, str(root)) for p in everything]
    (root / "videos").mkdir(parents=True, exist_ok=True)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_render_and_write, jobs, chunksize=4))
    else:
        done = [_render_and_write(j) for j in jobs]
    assert len(done) == len(everything)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "dataset": DATASET, "config": asdict(config),
                            "held_out_pairs": sorted(list(p) for p in hidden), "splits": {}}  # fmt: skip
    rows = []
    for split in SPLITS:
        moments = [q for p in plans[split] for q in p.queries]
        write_tvr_jsonl(root / "annotations" / f"{DATASET}_{split}.jsonl", moments)
        meta["splits"][split] = {
            "videos": len(plans[split]),
            "queries": len(moments),
            "held_out_combo_queries": sum(bool(m.extra["held_out_combo"]) for m in moments),
            "mean_duration": float(np.mean([p.num_frames / config.fps for p in plans[split]]))
            if plans[split]
            else 0.0,
            "chance": chance_baselines(moments, len(plans[split]), seed=config.seed),
        }
        rows += [json.dumps({"video_id": p.video_id, "split": split, "path": p.path, "duration": p.num_frames / config.fps,
                             "num_frames": p.num_frames, "fps": config.fps, "background": p.background}) for p in plans[split]]  # fmt: skip
    atomic_write_text(root / "videos.jsonl", "\n".join(rows) + "\n")
    atomic_write_json(meta_path, meta)
    return meta
