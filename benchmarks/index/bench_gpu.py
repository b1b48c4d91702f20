"""GPU exact search: vsr_index.GpuFlatIndex vs torch matmul + topk, in one run, interleaved.

    python benchmarks/index/bench_gpu.py                      # 1M x 2048 fp16, the issue's setting
    python benchmarks/index/bench_gpu.py --n 200000 --dim 768 # smaller

Prints a table and writes JSON next to it (benchmarks/index/results/bench_gpu.json by default).
Single-query bandwidth is reported against the measured device-to-device copy bandwidth (the
practical peak) and against the nominal peak when the GPU model is known.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import vsr_index

NOMINAL_BANDWIDTH_GBS = {
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H200": 4800.0,
    "A100": 2039.0,
}


def nominal_bandwidth(name: str) -> float | None:
    for key, value in NOMINAL_BANDWIDTH_GBS.items():
        if all(part in name for part in key.split()):
            return value
    return None


def cuda_time_ms(torch, fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 4096])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_gpu.json")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() or vsr_index.cuda_info()["device_count"] == 0:
        print(
            f"no usable GPU: torch={torch.cuda.is_available()} vsr_index={vsr_index.cuda_info()}",
            file=sys.stderr,
        )
        return 2
    props = torch.cuda.get_device_properties(0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(args.n, args.dim, device="cuda", dtype=torch.float16, generator=gen)
    base = torch.nn.functional.normalize(base.float(), dim=1).half()
    index = vsr_index.GpuFlatIndex(args.dim, metric="ip", storage="f16")
    index.add(base)

    copy_dst = torch.empty_like(base)
    copy_ms = statistics.median(cuda_time_ms(torch, lambda: copy_dst.copy_(base), args.reps))
    corpus_bytes = base.numel() * base.element_size()
    copy_gbs = 2 * corpus_bytes / copy_ms / 1e6  # read + write
    copy_dst = None  # free the copy buffer before the searches
    peak = nominal_bandwidth(props.name)

    header = {
        "gpu": props.name,
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "copy_bandwidth_gbs": round(copy_gbs, 1),
        "nominal_bandwidth_gbs": peak,
        "n": args.n,
        "dim": args.dim,
        "storage": "f16",
        "reps": args.reps,
        "torch": torch.__version__,
        "vsr_index": vsr_index.__version__,
        "host": platform.node(),
        "cpu_threads": os.cpu_count(),
    }
    print(json.dumps(header))
    rows = []
    print(
        f"{'batch':>6} {'k':>4} {'vsr ms':>9} {'torch ms':>9} {'speedup':>8} {'vsr GB/s':>9} {'% copy bw':>9} {'% nominal':>9}"
    )
    for batch in args.batches:
        queries = torch.nn.functional.normalize(
            torch.randn(batch, args.dim, device="cuda", generator=gen), dim=1
        ).half()
        for k in args.ks:

            def run_vsr(q=queries, k=k):
                index.search(q, k)

            def run_torch(q=queries, k=k):
                torch.topk(q @ base.T, k, dim=1)

            run_vsr(), run_torch()  # warm-up (kernel attributes, cuBLAS heuristics)
            vsr_times, torch_times = [], []
            for _ in range(args.reps):  # interleaved so drift hits both alike
                vsr_times += cuda_time_ms(torch, run_vsr, 1)
                torch_times += cuda_time_ms(torch, run_torch, 1)
            vsr_ms, torch_ms = statistics.median(vsr_times), statistics.median(torch_times)
            gbs = corpus_bytes / vsr_ms / 1e6
            row = {
                "batch": batch,
                "k": k,
                "vsr_ms": vsr_ms,
                "torch_ms": torch_ms,
                "speedup": torch_ms / vsr_ms,
                "vsr_gbs": gbs,
                "fraction_of_copy_bandwidth": gbs / copy_gbs,
                "fraction_of_nominal_bandwidth": gbs / peak if peak else None,
            }
            rows.append(row)
            nominal = f"{100 * gbs / peak:8.1f}%" if peak else "      n/a"
            print(
                f"{batch:>6} {k:>4} {vsr_ms:9.3f} {torch_ms:9.3f} {torch_ms / vsr_ms:7.2f}x {gbs:9.1f} "
                f"{100 * gbs / copy_gbs:8.1f}% {nominal}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"setup": header, "results": rows}, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
