"""Approximate search benchmark: recall@10 vs QPS at 1 thread, build time and index size of
vsr_index.GraphIndex against hnswlib, faiss (HNSW, IVF-PQ FastScan + exact refine), usearch and
scann (when installed), on the same data in one run.

    python benchmarks/index/bench_graph.py                  # 100k x 128 clustered + MiniLM FIG texts
    python benchmarks/index/bench_graph.py --n 20000 --no-real

Each sweep point times every library interleaved (one repetition of each in turn), 5 repetitions,
median. Build time in the main table is one build per library (1 thread); vsr-f32 and hnswlib are
also built interleaved at 1 and 2 threads (--build-repeats rounds, median wall-clock and CPU
seconds). Writes bench_graph.json (and the plot with --plot) to benchmarks/index/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

import common

import vsr_index

RESULTS = Path(__file__).resolve().parent / "results"
HNSW_EFS = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def synthetic(n: int, d: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    both = common.clustered_vectors(n + nq, d, seed=0)
    order = np.random.default_rng(1).permutation(n + nq)
    return np.ascontiguousarray(both[order[:n]]), np.ascontiguousarray(both[order[n:]])


def file_bytes(save: Callable[[str], None]) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "index")
        save(path)
        return os.path.getsize(path)


class Impl:
    """A library under test: build(), set_param(value), search(queries, k) -> ids, optional count."""

    def __init__(
        self,
        name: str,
        params: list,
        build: Callable,
        set_param: Callable,
        search: Callable,
        distances: Callable | None = None,
        size: Callable | None = None,
    ):
        self.name, self.params, self._build = name, params, build
        self.set_param, self.search, self.distances, self.size = set_param, search, distances, size
        self.build_s = math.nan

    def build(self) -> None:
        t0 = time.perf_counter()
        self._build()
        self.build_s = time.perf_counter() - t0


def build_vsr(x: np.ndarray, storage: str, m: int, efc: int, threads: int = 1) -> vsr_index.GraphIndex:
    g = vsr_index.GraphIndex(x.shape[1], metric="ip", storage=storage, M=m, ef_construction=efc)
    g.num_threads = threads
    g.add(x)
    return g


def build_hnswlib(x: np.ndarray, m: int, efc: int, threads: int = 1):
    import hnswlib

    h = hnswlib.Index(space="ip", dim=x.shape[1])
    h.init_index(max_elements=len(x), M=m, ef_construction=efc, random_seed=42)
    h.set_num_threads(threads)
    h.add_items(x, np.arange(len(x)))
    return h


def vsr_impl(x: np.ndarray, storage: str, m: int, efc: int) -> Impl:
    state = {}

    def build():
        state["g"] = build_vsr(x, storage, m, efc)

    def set_param(ef):
        state["g"].ef_search = ef

    return Impl(
        f"vsr-{storage}",
        HNSW_EFS,
        build,
        set_param,
        lambda q, k: state["g"].search(q, k, num_threads=1)[1],
        lambda q, k: state["g"].search_counted(q, k, num_threads=1)[2],
        lambda: file_bytes(state["g"].save),
    )


def hnswlib_impl(x: np.ndarray, m: int, efc: int) -> Impl | None:
    if importlib.util.find_spec("hnswlib") is None:
        return None
    state = {}

    def build():
        state["h"] = build_hnswlib(x, m, efc)

    return Impl(
        "hnswlib",
        HNSW_EFS,
        build,
        lambda ef: state["h"].set_ef(ef),
        lambda q, k: state["h"].knn_query(q, k=k, num_threads=1)[0],
        None,
        lambda: file_bytes(state["h"].save_index),
    )


def faiss_hnsw_impl(faiss, x: np.ndarray, m: int, efc: int) -> Impl:
    state = {}

    def build():
        idx = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = efc
        idx.add(x)
        state["i"] = idx

    def distances(q, k):
        faiss.cvar.hnsw_stats.reset()
        state["i"].search(q, k)
        return int(faiss.cvar.hnsw_stats.ndis)

    return Impl(
        "faiss-hnsw",
        HNSW_EFS,
        build,
        lambda ef: setattr(state["i"].hnsw, "efSearch", ef),
        lambda q, k: state["i"].search(q, k)[1],
        distances,
        lambda: file_bytes(lambda p: faiss.write_index(state["i"], p)),
    )


def faiss_ivfpq_impl(faiss, x: np.ndarray) -> Impl:
    state = {}
    n, d = x.shape
    nlist = int(4 * math.sqrt(n))

    def build():
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQFastScan(quantizer, d, nlist, d // 2, 4, faiss.METRIC_INNER_PRODUCT)
        ivf.train(x)
        refine = faiss.IndexRefineFlat(ivf)
        refine.k_factor = 4
        refine.add(x)
        state["i"], state["ivf"], state["q"] = refine, ivf, quantizer

    return Impl(
        "faiss-ivfpq-fs+refine",
        [1, 2, 3, 4, 6, 8, 12, 16, 32, 64],
        build,
        lambda p: setattr(state["ivf"], "nprobe", p),
        lambda q, k: state["i"].search(q, k)[1],
        None,
        lambda: file_bytes(lambda p: faiss.write_index(state["i"], p)),
    )


def usearch_impl(x: np.ndarray, m: int, efc: int) -> Impl | None:
    try:
        from usearch.index import Index
    except ImportError:
        return None
    state = {"ef": 64}

    def build():
        u = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=efc)
        u.add(np.arange(len(x)), x, threads=1)
        state["u"] = u

    def set_param(ef):
        state["u"].expansion_search = ef

    return Impl(
        "usearch",
        HNSW_EFS,
        build,
        set_param,
        lambda q, k: state["u"].search(q, k, threads=1).keys,
        None,
        lambda: file_bytes(state["u"].save),
    )


def scann_impl(x: np.ndarray) -> Impl | None:
    try:
        import scann
    except ImportError:
        return None
    state = {"leaves": 8}
    n = len(x)
    leaves = int(2 * math.sqrt(n))

    def build():
        s = (
            scann.scann_ops_pybind.builder(x, 10, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=8, training_sample_size=min(n, 100000))
            .score_ah(2, anisotropic_quantization_threshold=0.2)
            .reorder(100)
            .build()
        )
        state["s"] = s

    def search(q, k):
        return state["s"].search_batched(q, final_num_neighbors=k, leaves_to_search=state["leaves"])[0]

    return Impl(
        "scann",
        [1, 2, 3, 4, 6, 8, 12, 16, 32, 64],
        build,
        lambda p: state.__setitem__("leaves", p),
        search,
    )


def build_times_at(x: np.ndarray, args, threads: int) -> dict:
    """vsr-f32 and hnswlib builds with `threads` workers, interleaved: median wall-clock and CPU seconds."""
    cpu: dict[str, list[float]] = {"vsr-f32": [], "hnswlib": []}

    def timed_cpu(name: str, build: Callable[[], object]) -> None:
        t0 = time.process_time()
        build()
        cpu[name].append(time.process_time() - t0)

    fns = {
        "vsr-f32": lambda: timed_cpu(
            "vsr-f32", lambda: build_vsr(x, "f32", args.M, args.ef_construction, threads)
        ),
        "hnswlib": lambda: timed_cpu(
            "hnswlib", lambda: build_hnswlib(x, args.M, args.ef_construction, threads)
        ),
    }
    wall = common.interleaved(fns, repeats=args.build_repeats, warmup=0)
    row = {f"{name} wall_s": common.median(t) for name, t in wall.items()}
    row |= {f"{name} cpu_s": common.median(t) for name, t in cpu.items()}
    row["wall ratio"] = row["vsr-f32 wall_s"] / row["hnswlib wall_s"]
    row["cpu ratio"] = row["vsr-f32 cpu_s"] / row["hnswlib cpu_s"]
    print(
        f"build, {threads} thread(s), median of {args.build_repeats} interleaved: vsr-f32 "
        f"{row['vsr-f32 wall_s']:.2f} s wall / {row['vsr-f32 cpu_s']:.2f} s CPU, hnswlib "
        f"{row['hnswlib wall_s']:.2f} s / {row['hnswlib cpu_s']:.2f} s: {row['wall ratio']:.2f}x wall, "
        f"{row['cpu ratio']:.2f}x CPU"
    )
    return row


def build_times(x: np.ndarray, args) -> dict:
    return {threads: build_times_at(x, args, threads) for threads in (1, 2)}


def qps_at_recall(points: list[dict], target: float) -> float | None:
    """QPS where the recall curve crosses `target` (log-QPS interpolated), None if it never does."""
    pts = sorted(points, key=lambda p: p["recall"])
    for a, b in itertools.pairwise(pts):
        if a["recall"] < target <= b["recall"]:
            t = (target - a["recall"]) / (b["recall"] - a["recall"])
            return math.exp((1 - t) * math.log(a["qps"]) + t * math.log(b["qps"]))
    above = [p["qps"] for p in pts if p["recall"] >= target]
    return max(above) if above else None


def run_dataset(name: str, x: np.ndarray, q: np.ndarray, args, faiss) -> dict:
    print(f"\n== {name}: {len(x)} x {x.shape[1]} vectors, {len(q)} queries, k={args.k}, 1 thread")
    truth = np.argsort(-(q @ x.T), axis=1)[:, : args.k]
    impls = [vsr_impl(x, s, args.M, args.ef_construction) for s in args.storages]
    impls += [hnswlib_impl(x, args.M, args.ef_construction)]
    if faiss is not None:
        impls += [faiss_hnsw_impl(faiss, x, args.M, args.ef_construction), faiss_ivfpq_impl(faiss, x)]
    impls += [usearch_impl(x, args.M, args.ef_construction), scann_impl(x)]
    impls = [i for i in impls if i is not None]
    for impl in impls:
        impl.build()
        print(f"built {impl.name} in {impl.build_s:.1f} s")
    curves: dict[str, list[dict]] = {i.name: [] for i in impls}
    for step in range(len(HNSW_EFS)):
        for impl in impls:
            impl.set_param(impl.params[step])
        fns = {impl.name: (lambda impl=impl: impl.search(q, args.k)) for impl in impls}
        times = common.interleaved(fns, repeats=args.repeats)
        for impl in impls:
            ids = np.asarray(impl.search(q, args.k)).astype(np.int64)
            point = {
                "param": impl.params[step],
                "recall": common.recall_at_k(ids, truth),
                "qps": len(q) / common.median(times[impl.name]),
                "distances_per_query": impl.distances(q, args.k) / len(q) if impl.distances else None,
            }
            curves[impl.name].append(point)
    rows = []
    for impl in impls:
        rows.append(
            {
                "library": impl.name,
                "build_s": impl.build_s,
                "index_MB": impl.size() / 1e6 if impl.size else None,
                "qps@0.90": qps_at_recall(curves[impl.name], 0.90),
                "qps@0.95": qps_at_recall(curves[impl.name], 0.95),
                "qps@0.99": qps_at_recall(curves[impl.name], 0.99),
                "max_recall": max(p["recall"] for p in curves[impl.name]),
            }
        )
    common.print_table(
        rows, ["library", "build_s", "index_MB", "qps@0.90", "qps@0.95", "qps@0.99", "max_recall"]
    )
    print("\nrecall / QPS / distances per query at each sweep point:")
    for impl in impls:
        pts = ", ".join(
            f"{p['param']}: {p['recall']:.3f}/{p['qps']:.0f}"
            + (f"/{p['distances_per_query']:.0f}" if p["distances_per_query"] else "")
            for p in curves[impl.name]
        )
        print(f"  {impl.name}: {pts}")
    by = {r["library"]: r for r in rows}
    ratios = {}
    best_vsr = max((r for r in rows if r["library"].startswith("vsr")), key=lambda r: r["qps@0.95"] or 0)
    for other in ("hnswlib", "faiss-hnsw", "usearch", "faiss-ivfpq-fs+refine", "scann"):
        if other in by and by[other]["qps@0.95"] and best_vsr["qps@0.95"]:
            ratios[f"{best_vsr['library']} / {other} qps@0.95"] = best_vsr["qps@0.95"] / by[other]["qps@0.95"]
    builds = None
    if "hnswlib" in by and "vsr-f32" in by:
        ratios["vsr-f32 / hnswlib build time"] = by["vsr-f32"]["build_s"] / by["hnswlib"]["build_s"]
        builds = build_times(x, args)
        for threads, row in builds.items():
            ratios[f"vsr-f32 / hnswlib build time, {threads} thread(s), median wall"] = row["wall ratio"]
            ratios[f"vsr-f32 / hnswlib build time, {threads} thread(s), median CPU"] = row["cpu ratio"]
    for key, val in ratios.items():
        print(f"{key}: {val:.2f}x")
    return {
        "dataset": name,
        "n": len(x),
        "dim": x.shape[1],
        "queries": len(q),
        "rows": rows,
        "curves": curves,
        "ratios": ratios,
        "builds": builds,
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for name, pts in res["curves"].items():
            pts = sorted(pts, key=lambda p: p["recall"])
            style = "-o" if name.startswith("vsr") else "--s"
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], style, ms=3, label=name)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second (1 thread)")
        ax.set_yscale("log")
        ax.set_xlim(0.8, 1.0)
        ax.axvline(0.95, color="grey", lw=0.5)
        ax.set_title(f"{res['dataset']}")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--storages", nargs="+", default=["f32", "bf16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--build-repeats", type=int, default=5, help="interleaved builds per thread count")
    ap.add_argument("--no-real", action="store_true", help="skip the MiniLM FIG embeddings")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_graph.json")
    args = ap.parse_args(argv)
    try:
        import faiss
    except ImportError:
        faiss = None
    machine = common.cpu_info()
    common.print_machine(machine, {"threads": 1, "M": args.M, "ef_construction": args.ef_construction})
    with common.limit_threads(1):
        results = [
            run_dataset(f"clustered-{args.n}x{args.dim}", *synthetic(args.n, args.dim, args.nq), args, faiss)
        ]
        if not args.no_real:
            x, q = common.real_minilm(args.nq)
            results.append(run_dataset(f"minilm-fig-{len(x)}x{x.shape[1]}", x, q, args, faiss))
    common.write_json(
        args.out, {"machine": machine, "args": vars(args) | {"out": str(args.out)}, "results": results}
    )
    print(f"\nwrote {args.out}")
    if args.plot:
        png = args.out.with_suffix(".png")
        plot(results, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
