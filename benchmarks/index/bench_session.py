"""Session benchmark: multi-turn refinement (Index.session / Session.refine, Index.refine_group)
versus a cold search of every refined query at equal recall, on the graph and the exact index.

    python benchmarks/index/bench_session.py                 # MiniLM FIG query embeddings
    python benchmarks/index/bench_session.py --data clustered --n 100000 --dim 128
    python benchmarks/index/bench_session.py --warm-ef-search 32 --out benchmarks/index/results/bench_session_warm32.json

300 sessions x 5 turns per query move. A move of cosine c gives each turn a fresh refined query at
cosine c from the session's original (as when the original text is re-embedded with a turn's soft
tokens). For each move: which path each refine took (pool = proven from the cached pool, warm,
cold), distances computed per refine and per cold search, recall@k of both against the exact
answer, and latency per call; the cold search uses the smallest ef_search whose recall matches the
refines' recall; start_us is a session's first search, which fills the pool (graph: a search for
pool_size results; exact index: the full scan a cold search also does). Latencies are medians over
>= 5 interleaved repetitions, 1 thread. Writes bench_session.json to benchmarks/index/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_graph
import common

import vsr_index

RESULTS = Path(__file__).resolve().parent / "results"
MOVES = [0.999, 0.99, 0.96, 0.92]
COLD_EFS = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def moved_queries(q0: np.ndarray, cos: float, turns: int, rng: np.random.Generator) -> np.ndarray:
    """(len(q0), turns, d) unit vectors, each at cosine `cos` from its original."""
    n, d = q0.shape
    r = rng.standard_normal((n, turns, d)).astype(np.float32)
    r -= np.einsum("ntd,nd->nt", r, q0)[..., None] * q0[:, None, :]
    r /= np.linalg.norm(r, axis=2, keepdims=True)
    out = cos * q0[:, None, :] + np.sqrt(1 - cos * cos) * r
    return (out / np.linalg.norm(out, axis=2, keepdims=True)).astype(np.float32)


def run_sessions(
    index, q0: np.ndarray, refined: np.ndarray, k: int, pool: int
) -> tuple[list, np.ndarray, float, float]:
    """One pass: every session's refines. Returns infos, ids (n, turns, k), seconds per refine and
    seconds per session start (the first search, which fills the pool)."""
    n, turns, _ = refined.shape
    ids = np.empty((n, turns, k), dtype=np.int64)
    infos = []
    elapsed = started = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        s = index.session(q0[i], k, pool_size=pool)
        started += time.perf_counter() - t0
        for t in range(turns):
            t0 = time.perf_counter()
            _, ids[i, t], info = s.refine(refined[i, t], k)
            elapsed += time.perf_counter() - t0
            infos.append(info)
    return infos, ids, elapsed / (n * turns), started / n


def run_cold(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Cold single-query searches (one call per query, like a refine). Seconds per search."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    t0 = time.perf_counter()
    for i, q in enumerate(queries):
        ids[i] = index.search(q[None], k, num_threads=1)[1][0]
    return ids, (time.perf_counter() - t0) / len(queries)


def cold_curve(index, queries: np.ndarray, truth: np.ndarray, k: int) -> list[dict]:
    """Recall and distances per query of cold graph searches across ef_search."""
    out = []
    for ef in COLD_EFS:
        index.ef_search = ef
        _, ids, dist = index.search_counted(queries, k, num_threads=1)
        out.append({"ef": ef, "recall": common.recall_at_k(ids, truth), "distances": dist / len(queries)})
    return out


def bench_move(kind: str, index, x_truth, q0, cos, args, rng) -> dict:
    refined = moved_queries(q0, cos, args.turns, rng)
    flat_q = refined.reshape(-1, refined.shape[2])
    truth = x_truth(flat_q)
    graph = kind == "graph"
    pool = args.pool_size if graph else args.flat_pool_size
    if graph:
        index.ef_search = args.ef_search
    # First pass: paths, distances and recall of the refines.
    infos, ids, _, _ = run_sessions(index, q0, refined, args.k, pool)
    refine_recall = common.recall_at_k(ids.reshape(-1, args.k), truth)
    paths = [i["path"] for i in infos]
    dist = np.array([i["distances"] for i in infos], dtype=np.float64)
    by_path = {
        p: {"share": paths.count(p) / len(paths), "distances": float(dist[[x == p for x in paths]].mean())}
        for p in sorted(set(paths))
    }
    # Cold baseline at equal recall: smallest ef whose recall reaches the refines' recall.
    if graph:
        curve = cold_curve(index, flat_q, truth, args.k)
        match = next((c for c in curve if c["recall"] >= refine_recall), curve[-1])
        cold_ef, cold_recall, cold_dist = match["ef"], match["recall"], match["distances"]
    else:
        cold_ef, cold_recall, cold_dist = None, 1.0, float(len(index))

    def sessions_pass():
        if graph:
            index.ef_search = args.ef_search
        return run_sessions(index, q0, refined, args.k, pool)[2:]

    def cold_pass():
        if graph:
            index.ef_search = cold_ef
        return run_cold(index, flat_q, args.k)[1]

    refine_s, start_s, cold_s = [], [], []
    for _ in range(args.repeats):  # interleaved: one pass of each in turn
        refine, start = sessions_pass()
        refine_s.append(refine)
        start_s.append(start)
        cold_s.append(cold_pass())
    refine_lat, cold_lat = common.median(refine_s), common.median(cold_s)
    row = {
        "index": kind,
        "cosine": cos,
        "pool_size": pool,
        "pool": by_path.get("pool", {}).get("share", 0.0),
        "warm": by_path.get("warm", {}).get("share", 0.0),
        "cold": by_path.get("cold", {}).get("share", 0.0),
        "refine_dist": float(dist.mean()),
        "refine_recall": refine_recall,
        "refine_us": refine_lat * 1e6,
        "cold_ef": cold_ef,
        "cold_recall": cold_recall,
        "cold_dist": cold_dist,
        "cold_us": cold_lat * 1e6,
        "speedup": cold_lat / refine_lat,
        "dist_ratio": cold_dist / float(dist.mean()),
        "start_us": common.median(start_s) * 1e6,
    }
    return row | {"by_path": by_path}


def bench_group(kind: str, index, x_truth, q0, cos, args, rng) -> dict:
    """refine_group (G refined queries sharing one pool) vs G cold single searches, with the recall
    of both. The pool is `--group-pool-size` (0: automatic, max(64, 8k), as the search engine calls it)."""
    refined = moved_queries(q0, cos, args.group, rng)
    flat_q = refined.reshape(-1, refined.shape[2])
    truth = x_truth(flat_q)
    pool = args.group_pool_size or None
    if kind == "graph":
        index.ef_search = args.ef_search

    def group_pass():
        for i in range(len(q0)):
            index.refine_group(q0[i], refined[i], args.k, pool_size=pool)

    def cold_pass():
        run_cold(index, flat_q, args.k)

    # Seconds per group (one original + G refined queries).
    times = common.interleaved({"group": group_pass, "cold": cold_pass}, repeats=args.repeats, warmup=0)
    group_s, cold_s = (common.median(times[key]) / len(q0) for key in ("group", "cold"))
    group_ids, paths = [], []
    for i in range(len(q0)):
        _, ids, info = index.refine_group(q0[i], refined[i], args.k, pool_size=pool)
        group_ids.append(ids)
        paths.extend(q["path"] for q in info["queries"])
    cold_ids, _ = run_cold(index, flat_q, args.k)
    return {
        "index": kind,
        "cosine": cos,
        "G": args.group,
        "pool_size": pool or "auto",
        "group_us": group_s * 1e6,
        "cold_x_G_us": cold_s * 1e6,
        "speedup": cold_s / group_s,
        "group_recall": common.recall_at_k(np.concatenate(group_ids), truth),
        "cold_recall": common.recall_at_k(cold_ids, truth),
        "paths": {p: paths.count(p) / len(paths) for p in sorted(set(paths))},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["minilm", "clustered"], default="minilm")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--pool-size", type=int, default=512, help="graph sessions' pool")
    ap.add_argument(
        "--flat-pool-size",
        type=int,
        default=4096,
        help="exact-index sessions' pool (the first search is a full scan either way)",
    )
    ap.add_argument(
        "--group-pool-size",
        type=int,
        default=0,
        help="refine_group's shared pool (0: automatic, as vsr_model's engine.refine_group calls it)",
    )
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument(
        "--ef-search", type=int, default=64, help="ef of the graph's first search and warm starts"
    )
    ap.add_argument(
        "--warm-ef-search",
        type=int,
        default=0,
        help="the graph's warm_ef_search: beam of warm-started refines (0: ef_search)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_session.json")
    args = ap.parse_args(argv)
    if args.data == "minilm":
        x, q0 = common.real_minilm(args.sessions)
    else:
        x, q0 = bench_graph.synthetic(args.n, args.dim, args.sessions)
    machine = common.cpu_info()
    common.print_machine(
        machine,
        {
            "threads": 1,
            "data": f"{args.data} {len(x)} x {x.shape[1]}",
            "sessions x turns": f"{args.sessions} x {args.turns}",
            "k / pool_size": f"{args.k} / graph {args.pool_size}, exact {args.flat_pool_size}",
            "graph": f"M={args.M} ef_construction={args.ef_construction} ef_search={args.ef_search} "
            f"warm_ef_search={args.warm_ef_search or args.ef_search}",
        },
    )
    with common.limit_threads(1):
        graph = vsr_index.GraphIndex(x.shape[1], metric="ip", M=args.M, ef_construction=args.ef_construction)
        graph.num_threads = 1
        graph.warm_ef_search = args.warm_ef_search or None
        t0 = time.perf_counter()
        graph.add(x)
        print(f"graph built in {time.perf_counter() - t0:.1f} s")
        flat = vsr_index.FlatIndex(x.shape[1], metric="ip")
        flat.add(x)
        flat.num_threads = 1

        def truth(q):
            return flat.search(q, args.k, num_threads=1)[1]

        rng = np.random.default_rng(7)
        rows, groups = [], []
        for kind, index in (("graph", graph), ("flat", flat)):
            for cos in MOVES:
                rows.append(bench_move(kind, index, truth, q0, cos, args, rng))
                groups.append(bench_group(kind, index, truth, q0, cos, args, rng))
    print("\nrefine vs cold search of the same refined query (per call, 1 thread):")
    common.print_table(
        rows,
        [
            "index",
            "cosine",
            "pool_size",
            "pool",
            "warm",
            "cold",
            "refine_dist",
            "refine_recall",
            "refine_us",
            "cold_ef",
            "cold_recall",
            "cold_dist",
            "cold_us",
            "speedup",
            "dist_ratio",
            "start_us",
        ],
    )
    print("\ndistances per refine by path:")
    for r in rows:
        parts = ", ".join(f"{p}: {v['share']:.0%} x {v['distances']:.0f}" for p, v in r["by_path"].items())
        print(f"  {r['index']} cos={r['cosine']}: {parts}")
    print(f"\nrefine_group (G={args.group} refined queries, one shared pool) vs G cold searches:")
    common.print_table(
        groups,
        [
            "index",
            "cosine",
            "G",
            "pool_size",
            "group_us",
            "cold_x_G_us",
            "speedup",
            "group_recall",
            "cold_recall",
        ],
    )
    for g in groups:
        parts = ", ".join(f"{p}: {v:.0%}" for p, v in g["paths"].items())
        print(f"  {g['index']} cos={g['cosine']}: {parts}")
    common.write_json(
        args.out,
        {
            "machine": machine,
            "args": vars(args) | {"out": str(args.out)},
            "n": len(x),
            "dim": x.shape[1],
            "refine": rows,
            "group": groups,
        },
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
