"""The index's reliability guarantees, from Python: writes are all-or-nothing (also when memory
runs out), ids stay consecutive and representable, scores stay finite, saved files honour the
umask and leave no temporary files behind, and a mapped file changed on disk is an error rather
than other results or a SIGBUS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vsr_index

KINDS = ["flat", "graph"]


def _make(kind: str, dim: int = 8, **kw):
    if kind == "flat":
        return vsr_index.FlatIndex(dim, **kw)
    return vsr_index.GraphIndex(dim, M=4, ef_construction=16, **kw)


def _run(script: str) -> subprocess.CompletedProcess:
    """A script in a fresh interpreter: a crash (SIGBUS) there is a failed assertion here."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("kind", KINDS)
def test_automatic_ids_are_consecutive(kind):
    index = _make(kind)
    rng = np.random.default_rng(0)
    index.add(rng.standard_normal((4, 8)))
    index.add(rng.standard_normal((4, 8)))
    _, ids = index.search(rng.standard_normal(8), 8)
    assert sorted(ids[0].tolist()) == list(range(8))
    index.add(rng.standard_normal((1, 8)), ids=[50])
    index.add(rng.standard_normal((2, 8)))
    assert index.reconstruct([51, 52]).shape == (2, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_the_largest_id_leaves_room_for_the_next_one(kind, tmp_path):
    index = _make(kind)
    x = np.ones((1, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="at most 2\\^63 - 2"):
        index.add(x, ids=[2**63 - 1])
    assert len(index) == 0
    index.add(x, ids=[2**63 - 2])
    with pytest.raises(IndexError, match="automatic ids"):
        index.add(x)
    assert len(index) == 1
    index.save(tmp_path / "top.vsr")
    loaded = vsr_index.load(tmp_path / "top.vsr")
    assert len(loaded) == 1 and loaded.reconstruct([2**63 - 2]).shape == (1, 8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_vectors_whose_scores_overflow_float32_are_rejected(kind, metric, tmp_path):
    index = _make(kind, metric=metric)
    with pytest.raises(ValueError, match="norm 2e\\+20, above 1e18"):
        index.add(np.full((1, 8), 1e20 / np.sqrt(8) * 2, dtype=np.float32))
    assert len(index) == 0
    big = np.full((2, 8), 1e17, dtype=np.float32)
    big[1] *= -1
    index.add(big)
    scores, _ = index.search(big[0], 2)
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="above 1e18"):
        index.search(np.full(8, 1e20, dtype=np.float32), 1)
    index.save(tmp_path / "big.vsr")
    assert len(vsr_index.load(tmp_path / "big.vsr")) == 2
    # Cosine normalises: any finite direction is fine.
    cosine = _make(kind, metric="cosine")
    cosine.add(np.full((1, 8), 1e20, dtype=np.float32))
    assert len(cosine) == 1


def test_an_add_that_runs_out_of_memory_changes_nothing(tmp_path):
    """Under an address-space limit the add fails part-way with MemoryError; the index must be the
    one from before (its rows, its file), not one with codes but no originals."""
    result = _run(
        f"""
        import json, resource, numpy as np, vsr_index
        dim, n = 256, 20000
        rng = np.random.default_rng(0)
        index = vsr_index.FlatIndex(dim, storage="int8", rerank=2)
        index.add(rng.standard_normal((n, dim), dtype=np.float32))
        queries = rng.standard_normal((4, dim), dtype=np.float32)
        before = index.search(queries, 5)
        extra = rng.standard_normal((60000, dim), dtype=np.float32)
        def vm_bytes():
            for line in open("/proc/self/status"):
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        outcomes = []
        for margin_mb in (10, 30, 50, 70, 90, 110, 140, 180):
            resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + margin_mb * 2**20, hard))
            try:
                index.add(extra)
                outcome = "added"
            except MemoryError:
                outcome = "MemoryError"
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            outcomes.append(outcome)
            if outcome == "added":
                break
            after = index.search(queries, 5)
            same = len(index) == n and all(np.array_equal(a, b) for a, b in zip(before, after))
            index.save("{tmp_path}/after.vsr")
            loaded = vsr_index.load("{tmp_path}/after.vsr")
            same = same and len(loaded) == n and np.array_equal(loaded.search(queries, 5)[1], before[1])
            if not same:
                outcomes.append("changed")
                break
        print(json.dumps(dict(outcomes=outcomes, size=len(index))))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert "changed" not in report["outcomes"]
    assert "MemoryError" in report["outcomes"]  # the limit did bite part-way at least once
    assert report["outcomes"][-1] == "added" and report["size"] == 80000


@pytest.mark.parametrize("kind", KINDS)
def test_saved_files_follow_the_umask_and_keep_an_existing_mode(kind, tmp_path):
    index = _make(kind)
    index.add(np.eye(8, dtype=np.float32))
    path = tmp_path / "index.vsr"
    old = os.umask(0o027)
    try:
        index.save(path)
        assert path.stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        path.chmod(0o600)
        index.save(path)
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_save_removes_what_a_killed_save_left_behind(tmp_path):
    index = _make("flat")
    index.add(np.eye(8, dtype=np.float32))
    path = tmp_path / "index.vsr"
    # A save killed with SIGKILL half-way through leaves its temporary file: nothing holds it now.
    script = f"""
        import os, signal, numpy as np, vsr_index
        index = vsr_index.FlatIndex(64)
        index.add(np.random.default_rng(0).standard_normal((200000, 64), dtype=np.float32))
        pid = os.fork()
        if pid == 0:
            index.save("{path}")
            os._exit(0)
        # Killed as soon as its temporary file exists (or once the save is over, if it won).
        import glob, time
        while not glob.glob("{path}.tmp-*") and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(len(glob.glob("{path}.tmp-*")))
    """
    leftovers = [tmp_path / "index.vsr.tmp-a1b2C3"]
    leftovers[0].write_bytes(b"x" * 4096)
    result = _run(script)
    assert result.returncode == 0, result.stderr
    assert any(tmp_path.glob("index.vsr.tmp-*"))
    index.save(path)
    assert not any(tmp_path.glob("index.vsr.tmp-*"))
    assert len(vsr_index.load(path)) == 8


@pytest.mark.parametrize("kind", KINDS)
def test_a_mapped_file_changed_in_place_is_an_error_not_a_crash(kind, tmp_path):
    path = tmp_path / "index.vsr"
    result = _run(
        f"""
        import os, numpy as np, vsr_index
        kind = "{kind}"
        make = vsr_index.FlatIndex if kind == "flat" else vsr_index.GraphIndex
        index = make(16)
        x = np.random.default_rng(0).standard_normal((3000, 16), dtype=np.float32)
        index.add(x)
        index.save("{path}")
        other = make(16)
        other.add(-x)
        other.save("{path}.other")
        mapped = vsr_index.load("{path}", mmap=True)
        first = mapped.search(x[:3], 5)
        # Replaced by a save (rename): the mapping keeps the old file, results do not change.
        index.save("{path}")
        assert all((a == b).all() for a, b in zip(mapped.search(x[:3], 5), first))
        mapped = vsr_index.load("{path}", mmap=True)
        # Overwritten in place with another index of the same size, a second later.
        data = open("{path}.other", "rb").read()
        with open("{path}", "r+b") as f:
            f.write(data)
        st = os.stat("{path}")
        os.utime("{path}", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        try:
            mapped.search(x[:3], 5)
            print("no error")
        except OSError as e:
            print("changed" if "changed on disk" in str(e) else repr(e))
        # Truncated in place: reading the mapping would raise SIGBUS.
        mapped = vsr_index.load("{path}", mmap=True)
        os.truncate("{path}", 4096)
        for call in (lambda: mapped.search(x[:3], 5), lambda: mapped.reconstruct([1]), lambda: mapped.session(x[0], 3)):
            try:
                call()
                print("no error")
            except OSError as e:
                print("changed" if "changed on disk" in str(e) else repr(e))
        """
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stdout.split() == ["changed"] * 4
