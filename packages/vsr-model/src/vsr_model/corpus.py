"""A video corpus (video id -> file) and corpus indexing: decode -> embed -> index.

Indexing writes embeddings in atomic chunk files, one folder per shard, so an interrupted run resumes
where it stopped (finished chunks are read back; their videos are not embedded again) and several
processes (torchrun / the deepspeed launcher, or `--shard i --num-shards n` by hand) split the corpus
without overlap. The merge checks that every corpus video is embedded exactly once, then writes the
engine with its index and id map.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsr_model.fileio import atomic_write, atomic_write_json, atomic_write_text
from vsr_model.video import FrameCache, FrameSampling, VideoClip, VideoDecodeError, decode_video

logger = logging.getLogger(__name__)


class Corpus:
    """Maps video ids to video files; `clip(video_id)` decodes (through the frame cache when given)."""

    def __init__(
        self,
        paths: dict[str, str | Path],
        cache: FrameCache | None = None,
        sampling: FrameSampling | None = None,
    ):
        if not paths:
            raise ValueError("a corpus needs at least one video")
        self.paths = {str(k): Path(v) for k, v in paths.items()}
        self.cache = cache
        self.sampling = sampling or FrameSampling()

    @classmethod
    def from_jsonl(cls, path: str | Path, split: str | None = None, **kwargs) -> Corpus:
        """Rows {"video_id", "path"[, "split"]}; relative paths are relative to the file's folder."""
        path = Path(path)
        paths: dict[str, Path] = {}
        with path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    vid, rel = str(row["video_id"]), row["path"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: expected {{'video_id', 'path'}}: {exc}") from exc
                if split is not None and row.get("split") != split:
                    continue
                if vid in paths:
                    raise ValueError(f"{path}:{lineno}: duplicate video id {vid!r}")
                p = Path(rel)
                paths[vid] = p if p.is_absolute() else path.parent / p
        if not paths:
            raise ValueError(f"{path}: no videos" + (f" in split {split!r}" if split else ""))
        return cls(paths, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, pattern: str = "*.mp4", **kwargs) -> Corpus:
        """Every file matching `pattern` under `folder`; the video id is the file name without suffix."""
        files = sorted(Path(folder).rglob(pattern))
        ids = [f.stem for f in files]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{folder}: several files share a name; video ids would collide")
        return cls(dict(zip(ids, files, strict=True)), **kwargs)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.paths

    @property
    def ids(self) -> list[str]:
        return sorted(self.paths)

    def path(self, video_id: str) -> Path:
        try:
            return self.paths[video_id]
        except KeyError:
            raise KeyError(
                f"unknown video id {video_id!r} (not in this corpus of {len(self)} videos)"
            ) from None

    def clip(self, video_id: str, sampling: FrameSampling | None = None) -> VideoClip:
        sampling = sampling or self.sampling
        path = self.path(video_id)
        if self.cache is not None:
            return self.cache.get(path, sampling, video_id=video_id)
        return decode_video(path, sampling, video_id=video_id)


# --- indexing ------------------------------------------------------------------------------


@dataclass
class BuildConfig:
    batch_size: int = 8  # videos per embedding call
    chunk_size: int = 64  # videos per checkpoint file
    skip_bad_videos: bool = False  # record undecodable videos in failed.jsonl instead of stopping


def shard_ids(ids: Sequence[str], rank: int, world_size: int) -> list[str]:
    if not (0 <= rank < world_size):
        raise ValueError(f"shard rank {rank} out of range for {world_size} shards")
    return list(ids)[rank::world_size]


def _chunk_files(shard_dir: Path) -> list[Path]:
    return sorted(shard_dir.glob("chunk_*.npz"))


def _read_chunk(path: Path) -> tuple[list[str], np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return [str(v) for v in z["ids"]], np.asarray(z["vectors"], dtype=np.float32)


def _write_chunk(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids, dtype=str), vectors=vectors.astype(np.float32))
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _failed_rows(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {r["video_id"]: r["error"] for r in map(json.loads, path.read_text().splitlines()) if r}


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def embed_shard(
    engine,
    corpus: Corpus,
    work_dir: Path,
    rank: int,
    world_size: int,
    config: BuildConfig,
    progress: bool = True,
) -> int:
    """Embed this shard's videos not yet in its chunk files; returns how many were embedded now."""
    from tqdm import tqdm

    shard_dir = work_dir / f"shard_{rank:04d}_of_{world_size:04d}"
    shard_dir.mkdir(parents=True, exist_ok=True)
    mine = shard_ids(corpus.ids, rank, world_size)
    done: set[str] = set()
    for chunk in _chunk_files(shard_dir):
        done.update(_read_chunk(chunk)[0])
    failed_path = shard_dir / "failed.jsonl"
    failed = _failed_rows(failed_path)
    todo = [v for v in mine if v not in done and v not in failed]
    next_chunk = len(_chunk_files(shard_dir))
    embedded = 0
    pending_ids: list[str] = []
    pending_vecs: list[np.ndarray] = []
    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"embed shard {rank}/{world_size}",
        disable=not progress,
        unit="video",
    )

    def flush() -> None:
        nonlocal next_chunk
        if pending_ids:
            _write_chunk(
                shard_dir / f"chunk_{next_chunk:06d}.npz", list(pending_ids), np.concatenate(pending_vecs)
            )
            next_chunk += 1
            pending_ids.clear()
            pending_vecs.clear()

    for batch in _batches(todo, config.batch_size):
        clips, ok = [], []
        for vid in batch:
            try:
                clips.append(corpus.clip(vid))
                ok.append(vid)
            except (VideoDecodeError, FileNotFoundError) as exc:
                if not config.skip_bad_videos:
                    flush()
                    raise
                failed[vid] = str(exc)
                rows = "".join(json.dumps({"video_id": k, "error": v}) + "\n" for k, v in failed.items())
                atomic_write_text(failed_path, rows)  # the counted record of skipped videos
                logger.warning("skipping undecodable video %s: %s", vid, exc)
        if clips:
            vectors = engine.encode_videos(clips).numpy()
            if not np.all(np.isfinite(vectors)):
                flush()
                raise ValueError(f"non-finite embedding for one of {ok}")
            pending_ids.extend(ok)
            pending_vecs.append(vectors)
            embedded += len(ok)
            if len(pending_ids) >= config.chunk_size:
                flush()
        bar.update(len(batch))
    flush()
    bar.close()
    return embedded


def merge_shards(engine, corpus: Corpus, work_dir: Path, world_size: int) -> dict[str, object]:
    """Add every shard's embeddings to the engine in corpus order; check nothing is missing or doubled."""
    vectors: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for rank in range(world_size):
        shard_dir = work_dir / f"shard_{rank:04d}_of_{world_size:04d}"
        if not shard_dir.is_dir():
            raise FileNotFoundError(f"shard {rank} of {world_size} has not run: {shard_dir} is missing")
        for chunk in _chunk_files(shard_dir):
            ids, vecs = _read_chunk(chunk)
            for vid, vec in zip(ids, vecs, strict=True):
                if vid in vectors:
                    raise ValueError(f"video {vid!r} was embedded twice (second time in {chunk})")
                vectors[vid] = vec
        failed.update(_failed_rows(shard_dir / "failed.jsonl"))
    unknown = set(vectors) - set(corpus.paths)
    if unknown:
        raise ValueError(f"{work_dir} holds embeddings of videos not in the corpus: {sorted(unknown)[:5]}")
    missing = [v for v in corpus.ids if v not in vectors and v not in failed]
    if missing:
        raise ValueError(
            f"{len(missing)} corpus videos were never embedded (first: {missing[:5]}); run the missing shards"
        )
    order = [v for v in corpus.ids if v in vectors]
    engine.add_videos(order, np.stack([vectors[v] for v in order]))
    return {"indexed": len(order), "failed": len(failed), "failed_ids": sorted(failed)}


def build_index(
    engine,
    corpus: Corpus,
    out_dir: str | Path,
    config: BuildConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    *,
    embed: bool = True,
    merge: bool = True,
    barrier=None,
    progress: bool = True,
) -> dict[str, object] | None:
    """Decode -> embed -> index the corpus; rank 0 merges and saves the engine with its index and id
    map to out_dir/engine (plus out_dir/build_summary.json).

    Several processes: pass their rank / world_size and a `barrier` (torch.distributed.barrier) so rank
    0 merges once all shards are done. Separate jobs: run each shard with merge=False, then one call
    with embed=False to merge.
    """
    config = config or BuildConfig()
    out_dir = Path(out_dir)
    work_dir = out_dir / "embeddings"
    if len(engine):
        raise ValueError("build_index needs an engine with an empty index")
    if embed:
        embedded = embed_shard(engine, corpus, work_dir, rank, world_size, config, progress)
        logger.info("shard %d/%d embedded %d videos this run", rank, world_size, embedded)
    if barrier is not None:
        barrier()
    if rank != 0 or not merge:
        return None
    summary = merge_shards(engine, corpus, work_dir, world_size)
    engine.save(out_dir / "engine")
    summary["engine"] = str(out_dir / "engine")
    atomic_write_json(out_dir / "build_summary.json", summary)
    return summary
