import json
import shutil

import numpy as np
import pytest
import torch

from tests.vsr_model.conftest import tiny_dual_encoder_config
from vsr_model.corpus import BuildConfig, Corpus, build_index, shard_ids
from vsr_model.engine import DualEncoderEngine, SearchEngine
from vsr_model.video import FrameCache, VideoDecodeError


@pytest.fixture
def corpus(tiny_benchmark):
    return Corpus.from_jsonl(
        tiny_benchmark / "videos.jsonl", split="test", sampling=tiny_dual_encoder_config().sampling
    )


def fresh_engine(tmp_path) -> DualEncoderEngine:
    """The same engine every call (saved once, loaded again), with an empty index."""
    path = tmp_path / "base_engine"
    if not path.is_dir():
        DualEncoderEngine(tiny_dual_encoder_config()).save(path)
    return SearchEngine.load(path)


def test_corpus_maps_ids_to_files_and_decodes_through_the_cache(tmp_path, tiny_benchmark):
    corpus = Corpus.from_jsonl(tiny_benchmark / "videos.jsonl", cache=FrameCache(tmp_path / "c"))
    assert len(corpus) == 12 and "synth_test_00000" in corpus
    assert len(Corpus.from_jsonl(tiny_benchmark / "videos.jsonl", split="train")) == 6
    clip = corpus.clip("synth_test_00001")
    again = corpus.clip("synth_test_00001")
    assert clip.video_id == "synth_test_00001" and corpus.cache.hits == 1
    np.testing.assert_array_equal(clip.frames, again.frames)
    with pytest.raises(KeyError, match="unknown video id 'nope'"):
        corpus.clip("nope")
    folder = Corpus.from_folder(tiny_benchmark / "videos")
    assert folder.ids == corpus.ids


def test_corpus_file_errors(tmp_path):
    bad = tmp_path / "videos.jsonl"
    bad.write_text('{"video_id": "a", "path": "a.mp4"}\n{"video_id": "a", "path": "b.mp4"}\n')
    with pytest.raises(ValueError, match=r"videos.jsonl:2: duplicate video id 'a'"):
        Corpus.from_jsonl(bad)
    bad.write_text('{"video": "a"}\n')
    with pytest.raises(ValueError, match=r"videos.jsonl:1: expected"):
        Corpus.from_jsonl(bad)


def test_shards_partition_the_ids():
    ids = [f"v{i}" for i in range(11)]
    parts = [shard_ids(ids, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == sorted(ids) and not set(parts[0]) & set(parts[1])
    with pytest.raises(ValueError, match="out of range"):
        shard_ids(ids, 3, 3)


def test_build_indexes_every_video_once_with_its_embedding(tmp_path, corpus):
    engine = fresh_engine(tmp_path)
    summary = build_index(
        engine, corpus, tmp_path / "out", BuildConfig(batch_size=2, chunk_size=3), progress=False
    )
    assert summary["indexed"] == len(corpus) and summary["failed"] == 0
    loaded = SearchEngine.load(tmp_path / "out" / "engine")
    assert loaded.video_ids == corpus.ids
    direct = engine.encode_videos([corpus.clip("synth_test_00002")])
    assert torch.allclose(loaded.video_embeddings(["synth_test_00002"]), direct, atol=1e-5)
    assert json.loads((tmp_path / "out" / "build_summary.json").read_text())["indexed"] == len(corpus)


def test_build_resumes_after_a_failure_without_duplicates_or_losses(tmp_path, corpus):
    victim = corpus.ids[2]
    original = corpus.paths[victim]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(original.read_bytes()[:200])  # truncated file: decoding fails mid-run
    corpus.paths[victim] = broken
    config = BuildConfig(batch_size=1, chunk_size=1)
    with pytest.raises(VideoDecodeError):
        build_index(fresh_engine(tmp_path), corpus, tmp_path / "out", config, progress=False)
    chunks = sorted((tmp_path / "out" / "embeddings").rglob("chunk_*.npz"))
    assert len(chunks) == 2  # the two videos before the failure were checkpointed
    corpus.paths[victim] = original
    stamp = [c.stat().st_mtime_ns for c in chunks]
    summary = build_index(fresh_engine(tmp_path), corpus, tmp_path / "out", config, progress=False)
    assert summary["indexed"] == len(corpus)
    assert [c.stat().st_mtime_ns for c in chunks] == stamp  # finished work was not redone
    assert SearchEngine.load(tmp_path / "out" / "engine").video_ids == corpus.ids


def test_bad_videos_are_skipped_and_counted_only_when_asked(tmp_path, corpus):
    victim = corpus.ids[0]
    broken = tmp_path / "garbage.mp4"
    broken.write_bytes(b"garbage" * 50)
    corpus.paths[victim] = broken
    summary = build_index(
        fresh_engine(tmp_path), corpus, tmp_path / "out", BuildConfig(skip_bad_videos=True), progress=False
    )
    assert summary["failed"] == 1 and summary["failed_ids"] == [victim]
    assert summary["indexed"] == len(corpus) - 1
    failed = (tmp_path / "out" / "embeddings" / "shard_0000_of_0001" / "failed.jsonl").read_text()
    assert victim in failed and "garbage.mp4" in failed


def test_sharded_build_equals_single_process_build(tmp_path, corpus):
    single = build_index(fresh_engine(tmp_path), corpus, tmp_path / "one", progress=False)
    for rank in range(3):
        build_index(
            fresh_engine(tmp_path),
            corpus,
            tmp_path / "three",
            rank=rank,
            world_size=3,
            merge=False,
            progress=False,
        )
    with pytest.raises(ValueError, match="empty index"):
        build_index(SearchEngine.load(tmp_path / "one" / "engine"), corpus, tmp_path / "x", progress=False)
    merged = build_index(
        fresh_engine(tmp_path), corpus, tmp_path / "three", world_size=3, embed=False, progress=False
    )
    assert merged["indexed"] == single["indexed"] == len(corpus)
    a = SearchEngine.load(tmp_path / "one" / "engine")
    b = SearchEngine.load(tmp_path / "three" / "engine")
    assert a.video_ids == b.video_ids
    assert torch.allclose(a.video_embeddings(a.video_ids), b.video_embeddings(a.video_ids), atol=1e-5)
    # a missing shard is an error, not a smaller index
    shutil.rmtree(tmp_path / "three" / "embeddings" / "shard_0002_of_0003")
    with pytest.raises(FileNotFoundError, match="shard 2 of 3"):
        build_index(
            fresh_engine(tmp_path), corpus, tmp_path / "three", world_size=3, embed=False, progress=False
        )


def test_duplicate_embeddings_across_shards_are_detected(tmp_path, corpus):
    build_index(
        fresh_engine(tmp_path), corpus, tmp_path / "out", world_size=2, rank=0, merge=False, progress=False
    )
    build_index(
        fresh_engine(tmp_path), corpus, tmp_path / "out", world_size=2, rank=1, merge=False, progress=False
    )
    emb = tmp_path / "out" / "embeddings"
    shutil.copy(
        next((emb / "shard_0000_of_0002").glob("chunk_*.npz")),
        emb / "shard_0001_of_0002" / "chunk_000099.npz",
    )
    with pytest.raises(ValueError, match="embedded twice"):
        build_index(
            fresh_engine(tmp_path), corpus, tmp_path / "out", world_size=2, embed=False, progress=False
        )


def test_cli_build_and_eval(tmp_path, tiny_benchmark, capsys):
    from vsr_index.cli import main

    fresh_engine(tmp_path)
    assert main(["corpus", "build", "--engine", str(tmp_path / "base_engine"), "--videos", str(tiny_benchmark / "videos.jsonl"),
                 "--split", "test", "--out", str(tmp_path / "idx"), "--quiet"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["indexed"] == 4
    assert main(["engine", "eval", "--engine", str(tmp_path / "idx" / "engine"), "--annotations",
                 str(tiny_benchmark / "annotations" / "synth_test.jsonl"), "--group-by", "held_out_combo",
                 "--out", str(tmp_path / "r.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["all"]["videos"] == 4 and report["all"]["chance_R@1"] == 0.25
    assert 0 <= report["all"]["R@1"] <= report["all"]["R@5"] == 1.0


@pytest.mark.slow
def test_torchrun_two_processes_build_the_same_index(tmp_path, tiny_benchmark):
    """`vsr corpus build --distributed` under torchrun: two ranks share the work, rank 0 merges."""
    import shutil as sh
    import socket
    import subprocess
    import sys

    fresh_engine(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vsr = sh.which("vsr")
    assert vsr is not None
    args = [
        "--engine",
        str(tmp_path / "base_engine"),
        "--videos",
        str(tiny_benchmark / "videos.jsonl"),
        "--split",
        "test",
        "--quiet",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), vsr, "corpus", "build", *args, "--out", str(tmp_path / "dist"), "--distributed"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "dist" / "embeddings").iterdir())
    assert shards == ["shard_0000_of_0002", "shard_0001_of_0002"]
    single = build_index(fresh_engine(tmp_path), Corpus.from_jsonl(tiny_benchmark / "videos.jsonl", split="test",
                         sampling=tiny_dual_encoder_config().sampling), tmp_path / "one", progress=False)  # fmt: skip
    a = SearchEngine.load(tmp_path / "one" / "engine")
    b = SearchEngine.load(tmp_path / "dist" / "engine")
    assert single["indexed"] == len(b) == 4 and a.video_ids == b.video_ids
    assert torch.allclose(a.video_embeddings(a.video_ids), b.video_embeddings(a.video_ids), atol=1e-5)
