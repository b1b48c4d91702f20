"""Checkpoint manifests: complete checkpoints verify; partial, truncated or corrupted ones are refused."""

from __future__ import annotations

import json

import pytest
import torch

from vsr_train.checkpoint import (
    MANIFEST,
    CheckpointError,
    CheckpointManager,
    rng_state,
    set_rng_state,
    verify_checkpoint,
    write_manifest,
)
from vsr_train.runtime import DistInfo

DIST = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def fake_checkpoint(folder, step_payload=b"weights" * 100):
    (folder / "ds" / "state").mkdir(parents=True)
    (folder / "ds" / "state" / "model.pt").write_bytes(step_payload)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1, "world_size": 1}))
    write_manifest(folder)
    return folder


def test_complete_checkpoint_verifies(tmp_path):
    verify_checkpoint(fake_checkpoint(tmp_path / "step-00000001"))


def test_missing_manifest_is_partial(tmp_path):
    folder = fake_checkpoint(tmp_path / "step-00000001")
    (folder / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="partial"):
        verify_checkpoint(folder)


def test_truncated_file_is_detected_without_checksums(tmp_path):
    folder = fake_checkpoint(tmp_path / "step-00000001")
    target = folder / "ds" / "state" / "model.pt"
    target.write_bytes(target.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"model\.pt has 10 bytes"):
        verify_checkpoint(folder, checksums=False)


def test_flipped_byte_fails_the_checksum(tmp_path):
    folder = fake_checkpoint(tmp_path / "step-00000001")
    target = folder / "ds" / "state" / "model.pt"
    data = bytearray(target.read_bytes())
    data[5] ^= 0xFF
    target.write_bytes(bytes(data))
    verify_checkpoint(folder, checksums=False)  # same size: only the checksum can tell
    with pytest.raises(CheckpointError, match="sha256"):
        verify_checkpoint(folder)


def test_missing_file_and_garbage_manifest(tmp_path):
    folder = fake_checkpoint(tmp_path / "step-00000001")
    (folder / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"trainer_state\.json listed in the manifest is missing"):
        verify_checkpoint(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        verify_checkpoint(folder)


def test_resume_picks_the_newest_complete_and_ignores_interrupted_saves(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root / "step-00000002")
    fake_checkpoint(root / "step-00000004")
    (root / ".tmp-step-00000006" / "ds").mkdir(parents=True)  # a save killed half-way
    manager = CheckpointManager(root, DIST)
    with caplog.at_level("WARNING"):
        assert manager.resolve_resume("auto") == root / "step-00000004"
    assert "interrupted checkpoint save" in caplog.text
    assert manager.resolve_resume(str(root / "step-00000002")) == root / "step-00000002"


def test_resume_refuses_a_corrupted_newest_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root / "step-00000002")
    newest = fake_checkpoint(root / "step-00000004")
    (newest / "ds" / "state" / "model.pt").write_bytes(b"x" * 700)
    with pytest.raises(CheckpointError, match="step-00000004"):
        CheckpointManager(root, DIST).resolve_resume("auto")


def test_resume_never_with_existing_checkpoints_is_an_error(tmp_path):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root / "step-00000002")
    with pytest.raises(CheckpointError, match="resume is 'never'"):
        CheckpointManager(root, DIST).resolve_resume("never")
    assert CheckpointManager(tmp_path / "empty", DIST).resolve_resume("auto") is None


def test_rng_state_round_trip():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
