"""save/load: round trips (mapped and read), copy-on-write after mmap, and a loader that reports
every kind of damage as an error instead of reading garbage."""

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vsr_index


def _build(metric="ip", storage="f32", rerank=0, n=300, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    index = vsr_index.FlatIndex(dim, metric=metric, storage=storage, rerank=rerank)
    index.add(rng.standard_normal((n, dim)).astype(np.float32), ids=np.arange(n) * 3 + 1)
    return index, rng.standard_normal((5, dim)).astype(np.float32)


@pytest.mark.parametrize(
    ("metric", "storage", "rerank"), [("ip", "f32", 0), ("l2", "int8", 4), ("cosine", "bf16", 0)]
)
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, metric, storage, rerank, mmap):
    index, queries = _build(metric, storage, rerank)
    index.remove([1, 4])
    path = tmp_path / "index.vsr"
    index.save(path)  # os.PathLike works
    assert vsr_index.index_kind(path) == "flat"
    loaded = vsr_index.load(str(path), mmap=mmap)
    assert isinstance(loaded, vsr_index.FlatIndex) and isinstance(loaded, vsr_index.Index)
    assert (loaded.metric, loaded.storage, loaded.rerank, len(loaded), loaded.dim) == (
        metric,
        storage,
        rerank,
        298,
        24,
    )
    assert loaded.is_mapped == mmap
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    # New ids continue after the largest id ever added; writes leave the file untouched.
    loaded.add(queries[:1])
    assert loaded.score_ids(queries[0], [300 * 3 - 2 + 1]).shape == (1,)
    assert not loaded.is_mapped
    assert len(vsr_index.load(path)) == 298


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    index, _ = _build()
    path = tmp_path / "a.vsr"
    index.save(path)
    first = path.read_bytes()
    index.add(np.ones((1, 24), dtype=np.float32))
    index.save(path)  # replaces the old file in one step
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["a.vsr"]
    with pytest.raises(OSError, match="No such file or directory"):
        index.save(tmp_path / "missing-dir" / "x.vsr")


def test_load_reports_missing_wrong_and_newer_files(tmp_path):
    with pytest.raises(OSError, match="cannot open"):
        vsr_index.load(tmp_path / "nope.vsr")
    junk = tmp_path / "junk.vsr"
    junk.write_bytes(b"x" * 200)
    with pytest.raises(ValueError, match="wrong magic"):
        vsr_index.load(junk)
    index, _ = _build()
    path = tmp_path / "i.vsr"
    index.save(path)
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 99)  # a future format version, with a valid header checksum
    raw[60:64] = struct.pack("<I", _crc32c(bytes(raw[:60])))
    newer = tmp_path / "newer.vsr"
    newer.write_bytes(bytes(raw))
    with pytest.raises(NotImplementedError, match="upgrade"):
        vsr_index.load(newer)
    short = tmp_path / "short.vsr"
    short.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        vsr_index.load(short)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    index, queries = _build("l2", "int8", 2, n=60, dim=8)
    path = tmp_path_factory.mktemp("fuzz") / "base.vsr"
    index.save(path)
    return path.read_bytes(), index.search(queries, 5), queries


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_files_fail_cleanly_or_load_identically(tmp_path, saved, data):
    good, expected, queries = saved
    raw = bytearray(good)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    else:
        pos = data.draw(st.integers(0, len(raw) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=32))
        raw[pos : pos + len(chunk)] = chunk
    path = tmp_path / "fuzzed.vsr"
    path.write_bytes(bytes(raw))
    mmap = data.draw(st.booleans())
    try:
        loaded = vsr_index.load(path, mmap=mmap, verify=True)
    except (ValueError, NotImplementedError):
        return  # reported, as it must be
    # Only damage to padding can go unnoticed, and then the index is intact.
    for a, b in zip(expected, loaded.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
