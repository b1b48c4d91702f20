"""The search-engine interface both families implement, and the index bookkeeping they share.

An engine embeds queries (optionally with SQR soft tokens spliced into the text encoder's input
embeddings) and whole videos into one D-dimensional, L2-normalised space, and keeps a vsr_index
index of video embeddings keyed by string video ids.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vsr_model.fileio import atomic_write_json
from vsr_model.video import FrameSampling, VideoClip

logger = logging.getLogger(__name__)

INDEX_FILE = "index.vsr"  # the vsr_index index itself (served memory-mapped after a load)
INDEX_VECTORS = "index_vectors.npy"  # rows of folders written before index.vsr existed (read, never written)
INDEX_IDS = "index_ids.json"  # video id of each row
ENGINE_META = "engine.json"


@dataclass(frozen=True)
class Hit:
    video_id: str
    score: float


def as_query_matrix(queries: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """Validate query embeddings and return float32 C-contiguous (nq, dim) numpy."""
    if isinstance(queries, torch.Tensor):
        queries = queries.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(queries)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"query embeddings must have shape (n, {dim}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"query embeddings must be floating point, got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("query embeddings contain NaN or infinity")
    return arr


class VideoIndex:
    """vsr_index FlatIndex of video embeddings with a string id map; rows are never reused.

    Saved as the vsr_index file (search is served from its memory map after a load) and the id map.
    Stored rows are read back with `index.reconstruct` (`embeddings`: InfoNCE negatives; `vectors`:
    evaluation), which reads only the rows asked for from the map. A cosine index returns the
    normalised rows it stores.
    """

    def __init__(self, dim: int, metric: str = "cosine"):
        import vsr_index

        self.dim, self.metric = int(dim), metric
        self.index = vsr_index.FlatIndex(self.dim, metric)
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, video_ids: Sequence[str], embeddings: torch.Tensor | np.ndarray) -> None:
        vectors = as_query_matrix(embeddings, self.dim)
        video_ids = [str(v) for v in video_ids]
        if len(video_ids) != vectors.shape[0]:
            raise ValueError(f"{len(video_ids)} video ids for {vectors.shape[0]} embeddings")
        dup = [v for v in video_ids if v in self.rows]
        if dup or len(set(video_ids)) != len(video_ids):
            raise ValueError(
                f"video ids already in the index or repeated: {sorted(set(dup))[:5] or 'repeated in batch'}"
            )
        start = len(self.ids)
        self.index.add(vectors, ids=np.arange(start, start + len(video_ids), dtype=np.int64))
        for i, v in enumerate(video_ids):
            self.rows[v] = start + i
        self.ids.extend(video_ids)

    def embeddings(self, video_ids: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 stored rows of the videos, in the order asked (KeyError for unknown ids)."""
        return self.index.reconstruct(self.rows_of(video_ids))

    def vectors(self) -> np.ndarray:
        """Every stored row, in row order (an in-memory copy of the whole corpus)."""
        return self.index.reconstruct(np.arange(len(self.ids), dtype=np.int64))

    def rows_of(self, video_ids: Sequence[str]) -> np.ndarray:
        missing = [v for v in video_ids if v not in self.rows]
        if missing:
            raise KeyError(f"unknown video ids (not in the index): {missing[:5]}")
        return np.array([self.rows[v] for v in video_ids], dtype=np.int64)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        return [Hit(self.ids[r], float(sc)) for sc, r in zip(scores, rows, strict=True) if r >= 0]

    def _check_search(self, k: int) -> int:
        """Validates k; returns it capped at the corpus size (a corpus smaller than k is ranked whole)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not self.ids:
            raise RuntimeError("the engine's index is empty: add videos before searching")
        return min(int(k), len(self.ids))

    def _deny(self, video_ids: Collection[str]) -> np.ndarray | None:
        # ids not in the index cannot be returned anyway, so they need no excluding
        rows = np.array([self.rows[v] for v in video_ids if v in self.rows], dtype=np.int64)
        return rows if rows.size else None

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[Hit]]:
        k = self._check_search(k)
        if exclude is None:
            scores, rows = self.index.search(queries, k)
            return [self._hits(s, r) for s, r in zip(scores, rows, strict=True)]
        if len(exclude) != queries.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} entries for {queries.shape[0]} queries")
        out = []
        for q, skip in zip(queries, exclude, strict=True):
            scores, rows = self.index.search(q[None], k, deny=self._deny(skip))
            out.append(self._hits(scores[0], rows[0]))
        return out

    def rank_of(self, query: np.ndarray, video_id: str, exclude: Collection[str] = ()) -> int | None:
        """1-based rank of `video_id` among the indexed videos for one query (1, D), the `exclude`d
        videos left out; None when `video_id` is itself excluded. Ties count against it (a range search
        at its own score: one scan of the index, exact)."""
        if query.shape[0] != 1:
            raise ValueError(f"rank_of takes one query, got {query.shape[0]}")
        if video_id in exclude:
            return None
        row = self.rows_of([video_id])
        score = float(self.index.score_ids(query[0], row)[0])
        lims, _, _ = self.index.range_search(query, score - 1e-6, deny=self._deny(exclude))
        return max(1, int(lims[1] - lims[0]))

    def session(
        self, query: np.ndarray, k: int, exclude_seen: bool = True, exclude: Collection[str] = ()
    ) -> EngineSession:
        k = self._check_search(k)
        if query.shape[0] != 1:
            raise ValueError(f"a session starts from one query, got {query.shape[0]}")
        inner = self.index.session(query[0], k, exclude_seen=exclude_seen, deny=self._deny(exclude))
        return EngineSession(self, inner)

    def refine_group(
        self, original: np.ndarray, refined: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> list[list[Hit]]:
        k = self._check_search(k)
        if original.shape[0] != 1:
            raise ValueError(f"a group shares one original query, got {original.shape[0]}")
        scores, rows, _ = self.index.refine_group(original, refined, k, deny=self._deny(exclude))
        return [self._hits(s, r) for s, r in zip(scores, rows, strict=True)]

    def save(self, directory: Path) -> None:
        self.index.save(directory / INDEX_FILE)  # atomic (temp file + rename) inside vsr_index
        atomic_write_json(directory / INDEX_IDS, self.ids)
        # Rows of the earlier layout are superseded by index.vsr once it is written.
        (directory / INDEX_VECTORS).unlink(missing_ok=True)

    def load_into(self, directory: Path) -> None:
        """Read a saved index into this empty one: the vsr_index file, memory-mapped. A folder without
        index.vsr (the earlier layout: rows as index_vectors.npy + ids) is indexed from its rows."""
        import vsr_index

        if self.ids:
            raise RuntimeError("load_into needs an empty index")
        ids = json.loads((directory / INDEX_IDS).read_text())
        if not (directory / INDEX_FILE).is_file():
            if not (directory / INDEX_VECTORS).is_file():
                raise FileNotFoundError(
                    f"{directory}: neither {INDEX_FILE} nor {INDEX_VECTORS} (earlier layout)"
                )
            vectors = np.load(directory / INDEX_VECTORS, mmap_mode="r", allow_pickle=False)
            if vectors.shape != (len(ids), self.dim) or vectors.dtype != np.float32:
                raise ValueError(
                    f"{directory}: index rows {vectors.dtype} {vectors.shape} do not match "
                    f"{len(ids)} ids x dim {self.dim}"
                )
            if ids:
                self.add(ids, vectors)
            return
        index = vsr_index.load(directory / INDEX_FILE, mmap=True)
        if (index.kind, index.dim, index.metric, len(index)) != ("flat", self.dim, self.metric, len(ids)):
            raise ValueError(
                f"{directory / INDEX_FILE}: a {index.kind} {index.metric} index of {len(index)} x {index.dim}, "
                f"expected flat {self.metric} of {len(ids)} x {self.dim}; rebuild it with `vsr corpus build`"
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"{directory / INDEX_IDS}: repeated video ids")
        self.index = index
        self.ids = [str(v) for v in ids]
        self.rows = {v: i for i, v in enumerate(self.ids)}


class EngineSession:
    """A multi-turn search over the engine's index (a vsr_index session with video ids).

    `hits` are the first turn's results; `refine(new_query_embedding, k)` searches again, re-using the
    cached candidate pool when that provably gives the exact answer, and (with exclude_seen) never
    returns a video twice. `exclude(video_ids)` drops just those videos from every later turn (e.g.
    only the one the policy was shown). `seen` lists every video returned or excluded so far, in order.
    """

    def __init__(self, index: VideoIndex, inner):
        self._index, self._inner = index, inner
        self.hits: list[Hit] = index._hits(inner.scores, inner.ids)

    def refine(self, query_embedding: torch.Tensor | np.ndarray, k: int | None = None) -> list[Hit]:
        q = as_query_matrix(query_embedding, self._index.dim)
        if q.shape[0] != 1:
            raise ValueError(f"refine takes one query embedding, got {q.shape[0]}")
        if k is not None:
            k = self._index._check_search(k)
        scores, rows, _ = self._inner.refine(q[0], k)
        self.hits = self._index._hits(scores, rows)
        return self.hits

    def exclude(self, video_ids: Collection[str]) -> None:
        """Never return these videos in later turns (KeyError for videos not in the index)."""
        rows = self._index.rows_of(list(video_ids))
        if rows.size:
            self._inner.exclude(rows)

    @property
    def seen(self) -> list[str]:
        return [self._index.ids[r] for r in self._inner.seen.tolist()]

    @property
    def turns(self) -> int:
        return int(self._inner.turns)

    @property
    def info(self) -> dict[str, Any]:
        """How the latest turn was answered (vsr_index: path pool / warm / cold, distances, exact)."""
        return dict(self._inner.info)


class SearchEngine(ABC):
    """Query encoder + video encoder + index. Subclasses implement the encoders and their storage."""

    family: ClassVar[str]
    embed_dim: int  # D
    query_input_dim: int  # H_e: width of the text encoder's input embeddings (soft tokens arrive at it)
    sampling: FrameSampling  # how this engine wants videos sampled (corpus indexing uses it)

    def __init__(self, embed_dim: int, query_input_dim: int, metric: str = "cosine"):
        self.embed_dim, self.query_input_dim = int(embed_dim), int(query_input_dim)
        self.index = VideoIndex(self.embed_dim, metric)

    @classmethod
    @abstractmethod
    def from_config(cls, values: dict[str, Any]) -> SearchEngine:
        """A new engine (empty index) from the family's settings as a mapping (YAML / JSON)."""

    # --- encoders (family-specific) -------------------------------------------------------
    @abstractmethod
    def encode_query(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) float32, L2-normalised; soft_tokens (B, N, H_e) spliced after the query content."""

    @abstractmethod
    def encode_videos(self, clips: Sequence[VideoClip]) -> torch.Tensor:
        """(B, D) float32, L2-normalised, one embedding per whole clip."""

    @abstractmethod
    def _save_model(self, directory: Path) -> dict[str, Any]:
        """Write the family's weights/config; return what `_load_model` needs (JSON-able)."""

    @classmethod
    @abstractmethod
    def _load_model(cls, directory: Path, meta: dict[str, Any]) -> SearchEngine:
        """Rebuild the engine (without index contents) from `directory`."""

    # --- index (shared) -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def video_ids(self) -> list[str]:
        return list(self.index.ids)

    def add_videos(self, video_ids: Sequence[str], embeddings: torch.Tensor | np.ndarray) -> None:
        self.index.add(video_ids, embeddings)

    def _query_matrix(self, queries: torch.Tensor | np.ndarray | Sequence[str]) -> np.ndarray:
        if isinstance(queries, (list, tuple)) and queries and isinstance(queries[0], str):
            with torch.no_grad():
                queries = self.encode_query(list(queries))
        return as_query_matrix(queries, self.embed_dim)

    def search(
        self,
        queries: torch.Tensor | np.ndarray | Sequence[str],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Hit]]:
        """Top-k videos per query (texts or (nq, D) embeddings), best first; exclude = ids to skip."""
        return self.index.search(self._query_matrix(queries), k, exclude)

    def session(
        self,
        query_embedding: torch.Tensor | np.ndarray | str,
        k: int,
        exclude_seen: bool = True,
        exclude: Collection[str] = (),
    ) -> EngineSession:
        """Start a multi-turn search from one query (text or (D,) / (1, D) embedding); `exclude` are
        video ids never to return (e.g. already rejected elsewhere)."""
        if isinstance(query_embedding, str):
            query_embedding = [query_embedding]
        return self.index.session(self._query_matrix(query_embedding), k, exclude_seen, exclude)

    def rank_of(
        self, query: torch.Tensor | np.ndarray | str, video_id: str, exclude: Collection[str] = ()
    ) -> int | None:
        """1-based rank of `video_id` for one query (text or embedding) over the whole index, the
        `exclude`d videos left out (None when `video_id` is one of them)."""
        if isinstance(query, str):
            query = [query]
        return self.index.rank_of(self._query_matrix(query), video_id, exclude)

    def refine_group(
        self,
        original: torch.Tensor | np.ndarray | str,
        refined: torch.Tensor | np.ndarray,
        k: int,
        exclude: Collection[str] = (),
    ) -> list[list[Hit]]:
        """Top-k videos for each of G refined query embeddings (G, D) that share one original query (text
        or embedding), e.g. the G trajectories of a GRPO group: vsr_index scores them all against one
        candidate pool of the original in one blocked pass (exact: a search is re-run where the pool
        cannot prove the answer). `exclude` are video ids none of them may return."""
        if isinstance(original, str):
            original = [original]
        return self.index.refine_group(
            self._query_matrix(original), as_query_matrix(refined, self.embed_dim), k, exclude
        )

    def video_embeddings(self, video_ids: Sequence[str]) -> torch.Tensor:
        """Stored (L2-normalised) embeddings of indexed videos, in the order asked (InfoNCE negatives)."""
        return torch.from_numpy(self.index.embeddings(list(video_ids)))

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "embed_dim": self.embed_dim, "query_input_dim": self.query_input_dim,
                "metric": self.index.metric, "model": self._save_model(directory)}  # fmt: skip
        self.index.save(directory)
        atomic_write_json(directory / ENGINE_META, meta)  # last: its presence marks a complete save
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SearchEngine:
        """Load any family's saved engine (dispatching on the family recorded in engine.json)."""
        directory = Path(directory)
        meta_path = directory / ENGINE_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved engine (no {ENGINE_META})")
        meta = json.loads(meta_path.read_text())
        family = _FAMILIES.get(meta.get("family"))
        if family is None:
            raise ValueError(
                f"{meta_path}: unknown engine family {meta.get('family')!r}; known: {sorted(_FAMILIES)}"
            )
        if cls is not SearchEngine and not issubclass(family, cls):
            raise TypeError(f"{directory} holds a {meta['family']} engine, not {cls.__name__}")
        engine = family._load_model(directory, meta["model"])
        if engine.embed_dim != meta["embed_dim"]:
            raise ValueError(
                f"{meta_path}: embed_dim {meta['embed_dim']} but the model gives {engine.embed_dim}"
            )
        engine.index.load_into(directory)
        return engine


_FAMILIES: dict[str, type[SearchEngine]] = {}


def register_family(cls: type[SearchEngine]) -> type[SearchEngine]:
    _FAMILIES[cls.family] = cls
    return cls


def build_engine(family: str, values: dict[str, Any]) -> SearchEngine:
    """A new engine of the named family ("dual_encoder", "vlm_embedding") from its settings."""
    import vsr_model.engine  # noqa: F401  (registers every family)

    if family not in _FAMILIES:
        raise ValueError(f"unknown engine family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family].from_config(values)
