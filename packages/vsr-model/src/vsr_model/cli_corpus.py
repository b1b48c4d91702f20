"""`vsr corpus build`: decode -> embed -> index a video corpus with a saved engine."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    import torch

    from vsr_model.corpus import BuildConfig, Corpus, build_index
    from vsr_model.engine.base import SearchEngine
    from vsr_model.video import FrameCache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world_size, barrier = args.shard, args.num_shards, None
    if args.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                backend="gloo"
            )  # rank / world size from the launcher (torchrun, deepspeed)
        rank, world_size, barrier = dist.get_rank(), dist.get_world_size(), dist.barrier
    engine = SearchEngine.load(args.engine)
    if len(engine):
        raise SystemExit(
            f"{args.engine} already has an index of {len(engine)} videos; build from an engine without one"
        )
    cache = FrameCache(Path(args.frame_cache)) if args.frame_cache else None
    if args.videos.is_dir():
        corpus = Corpus.from_folder(args.videos, cache=cache, sampling=engine.sampling)
    else:
        corpus = Corpus.from_jsonl(args.videos, split=args.split, cache=cache, sampling=engine.sampling)
    config = BuildConfig(
        batch_size=args.batch_size, chunk_size=args.chunk_size, skip_bad_videos=args.skip_bad_videos
    )
    summary = build_index(engine, corpus, args.out, config, rank, world_size, embed=not args.merge_only,
                          merge=not args.no_merge, barrier=barrier, progress=not args.quiet)  # fmt: skip
    if summary is not None:
        print(json.dumps(summary, indent=2))
    if args.distributed:
        torch.distributed.destroy_process_group()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("corpus", help="video corpus: build the search index")
    sub = parser.add_subparsers(dest="corpus_command", metavar="CORPUS_COMMAND")
    build = sub.add_parser(
        "build",
        help="decode -> embed -> index (batched, resumable, shardable); writes OUT/engine with index + id map",
    )
    build.add_argument("--engine", required=True, help="saved engine (e.g. from `vsr engine fit`)")
    build.add_argument(
        "--videos", required=True, type=Path, help="videos.jsonl (video_id, path[, split]) or a folder of mp4"
    )
    build.add_argument("--split", help="only rows of this split (videos.jsonl)")
    build.add_argument("--out", required=True, help="output folder (embeddings/ checkpoints, engine/)")
    build.add_argument("--batch-size", type=int, default=8)
    build.add_argument("--chunk-size", type=int, default=64, help="videos per checkpoint file")
    build.add_argument("--frame-cache", help="folder for decoded frames")
    build.add_argument(
        "--skip-bad-videos",
        action="store_true",
        help="record undecodable videos in failed.jsonl instead of stopping",
    )
    build.add_argument(
        "--distributed",
        action="store_true",
        help="take rank / world size from torch.distributed (torchrun, deepspeed)",
    )
    build.add_argument("--shard", type=int, default=0, help="this process's shard (without --distributed)")
    build.add_argument("--num-shards", type=int, default=1)
    build.add_argument("--no-merge", action="store_true", help="only embed this shard")
    build.add_argument("--merge-only", action="store_true", help="only merge finished shards into the index")
    build.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)
    parser.set_defaults(func=lambda a: parser.print_help() or 2)
