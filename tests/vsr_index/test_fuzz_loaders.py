"""Fuzz (CI fuzz job, `pytest -m fuzz`): index files damaged at random and then re-sealed (every CRC
recomputed, so the damage gets past the checksums the way a crafted file would) either load into an
index that works, or are refused with an error; the loader never crashes or reads out of bounds."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vsr_index

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def sections(raw: bytes) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) from a file's section table (layout in cpp/include/vsr/io.hpp)."""
    count, table = struct.unpack_from("<IQ", raw, 20)[0], struct.unpack_from("<Q", raw, 24)[0]
    out = {}
    for i in range(count):
        entry = raw[table + 64 * i : table + 64 * (i + 1)]
        name = entry[:32].split(b"\0")[0].decode()
        out[name] = struct.unpack_from("<QQ", entry, 32)
    return out


def reseal(raw: bytearray) -> bytes:
    """Recompute every section CRC, the table CRC and the header CRC."""
    count, table = struct.unpack_from("<I", raw, 20)[0], struct.unpack_from("<Q", raw, 24)[0]
    for i in range(count):
        at = table + 64 * i
        offset, size = struct.unpack_from("<QQ", raw, at + 32)
        struct.pack_into("<I", raw, at + 48, crc32c(bytes(raw[offset : offset + size])))
    struct.pack_into("<I", raw, 40, crc32c(bytes(raw[table : table + 64 * count])))
    struct.pack_into("<I", raw, 60, crc32c(bytes(raw[:60])))
    return bytes(raw)


def _build(kind: str) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    if kind == "flat":
        index = vsr_index.FlatIndex(6, metric="l2", storage="int8", rerank=2)
    else:
        index = vsr_index.GraphIndex(6, metric="ip", storage="int8", M=4, ef_construction=16)
        index.num_threads = 1
    index.add(x)
    index.remove([3, 17, 30])  # free graph slots, moved flat rows
    return index, x


@pytest.fixture(scope="module", params=["flat", "graph"])
def saved(request, tmp_path_factory):
    index, x = _build(request.param)
    path = tmp_path_factory.mktemp("fuzz") / "base.vsr"
    index.save(path)
    return path.read_bytes(), x


# Values that break assumptions: zero, all ones, sign bits, sizes just past a limit.
BOUNDARY = st.sampled_from(
    [0, 1, 2, 15, 16, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
)


@FUZZ
@given(data=st.data())
def test_resealed_damage_is_refused_or_loads_an_index_that_works(tmp_path, saved, data):
    good, x = saved
    raw = bytearray(good)
    table = sections(good)
    name = data.draw(st.sampled_from(sorted(table)))
    offset, size = table[name]
    for _ in range(data.draw(st.integers(1, 3))):
        if size == 0:
            break
        how = data.draw(st.sampled_from(["byte", "word", "slot"]))
        if how == "byte":
            pos = offset + data.draw(st.integers(0, size - 1))
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif size >= 8:
            pos = offset + 4 * data.draw(st.integers(0, (size - 4) // 4))
            width = 8 if pos + 8 <= offset + size and data.draw(st.booleans()) else 4
            # A boundary value, or a small one: a plausible slot, count or level that points
            # somewhere inside the index, just not where it should.
            value = data.draw(BOUNDARY if how == "word" else st.integers(0, 45)) % (1 << (8 * width))
            raw[pos : pos + width] = value.to_bytes(width, "little")
    path = tmp_path / "fuzzed.vsr"
    path.write_bytes(reseal(raw))
    mmap, verify = data.draw(st.booleans()), data.draw(st.booleans())
    try:
        index = vsr_index.load(path, mmap=mmap, verify=verify)
    except (ValueError, NotImplementedError, OSError):
        return  # refused with an error naming the problem
    # It loaded: every operation works and stays inside the index.
    n = len(index)
    assert 0 <= n <= 40
    if n > 0:
        k = min(3, n)
        _, ids = index.search(x[:2], k)
        assert ((ids >= 0) | (ids == -1)).all()
        live = ids[ids >= 0]
        index.reconstruct(live)
        s = index.session(x[0], k)
        s.refine(x[1])
        index.remove(live[:1])
    index.add(x[:5])
    index.save(tmp_path / "again.vsr")
    assert len(vsr_index.load(tmp_path / "again.vsr", mmap=False)) == len(index)


@FUZZ
@given(data=st.binary(max_size=300), keep_header=st.booleans())
def test_arbitrary_bytes_are_refused(tmp_path, saved, data, keep_header):
    good, _ = saved
    raw = bytearray(good[:64] + data) if keep_header else bytearray(data)
    if keep_header and len(raw) >= 64:
        struct.pack_into("<Q", raw, 32, len(raw))  # a header that agrees with the size
        struct.pack_into("<I", raw, 60, crc32c(bytes(raw[:60])))
    path = tmp_path / "junk.vsr"
    path.write_bytes(bytes(raw))
    with pytest.raises((ValueError, NotImplementedError, OSError)):
        vsr_index.load(path)
