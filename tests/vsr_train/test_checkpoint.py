"""Checkpoint manifests: complete checkpoints verify; partial, truncated or corrupted ones are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from train_helpers import clean_env, run_checked, tiny_config, write_config

from vsr_train.checkpoint import (
    MANIFEST,
    CheckpointError,
    CheckpointManager,
    load_rng_state,
    rng_state,
    save_rng_state,
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


# ----------------------------------------------------------------------------------------------------------
# No code execution from checkpoint files: the manifest's checksums certify nothing (anyone can recompute
# them), so every file a resume reads is loaded without unpickling arbitrary objects.
# ----------------------------------------------------------------------------------------------------------


class Planted:
    """What an attacker plants: unpickling it (weights_only=False) runs code, here creating `marker`."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def plant(path, marker) -> None:
    """Write a malicious pickle at `path`, after proving that a plain torch.load of it runs code."""
    torch.save({"state": Planted(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the planted pickle should run code when loaded unrestricted"
    marker.unlink()


class RecordingEngine:
    """Stands in for a DeepSpeed engine: load_checkpoint reads its files through checkpoint_engine,
    as DeepSpeed's does."""

    def __init__(self, files) -> None:
        self.files = files
        self.checkpoint_engine = PlainLoader()
        self.loaded = []

    def load_checkpoint(self, load_dir, **kwargs):
        self.loaded = [self.checkpoint_engine.load(str(f), map_location="cpu") for f in self.files]
        return load_dir, {}


class PlainLoader:
    """DeepSpeed's TorchCheckpointEngine.load: an unrestricted torch.load."""

    def load(self, path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)


def checkpoint_with_rng(folder):
    fake_checkpoint(folder)
    (folder / "rng").mkdir()
    save_rng_state(folder / "rng" / "rank-00000.npz", rng_state())
    return folder


def test_rng_state_file_round_trips_python_numpy_and_torch(tmp_path):
    import random

    import numpy as np

    path = tmp_path / "rank-00000.npz"
    random.gauss(0, 1)  # a cached gaussian is part of Python's state
    save_rng_state(path, rng_state())
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))
    set_rng_state(load_rng_state(path))
    again = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))
    assert first[:4] == again[:4] and torch.equal(first[4], again[4])
    assert np.load(path, allow_pickle=False).files  # plain arrays: loads without pickle


def test_a_planted_rng_pickle_is_refused_without_running_code(tmp_path):
    folder = fake_checkpoint(tmp_path / "step-00000001")
    (folder / "rng").mkdir()
    marker = tmp_path / "pwned"
    plant(folder / "rng" / "rank-00000.pt", marker)  # where checkpoints of earlier versions kept it
    write_manifest(folder)  # the attacker recomputes the checksums
    engine = RecordingEngine([])
    with pytest.raises(CheckpointError, match="refused to load this RNG state"):
        CheckpointManager(folder.parent, DIST).load(engine, folder)
    assert not marker.exists()
    assert engine.loaded == []  # refused before the engine state was touched


def test_a_legacy_rng_pickle_of_plain_states_still_loads(tmp_path):
    folder = fake_checkpoint(tmp_path / "step-00000001")
    (folder / "rng").mkdir()
    torch.save(rng_state(), folder / "rng" / "rank-00000.pt")
    first = torch.rand(3)
    CheckpointManager(folder.parent, DIST).load(RecordingEngine([]), folder)
    assert torch.equal(torch.rand(3), first)


def test_an_object_array_in_the_rng_file_is_refused_without_running_code(tmp_path):
    import numpy as np

    folder = checkpoint_with_rng(tmp_path / "step-00000001")
    marker = tmp_path / "pwned"
    bad = folder / "rng" / "rank-00000.npz"
    with bad.open("wb") as fh:
        np.savez(fh, python_version=np.array([Planted(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="not a valid RNG state"):
        CheckpointManager(folder.parent, DIST).load(RecordingEngine([]), folder)
    assert not marker.exists()


def test_a_planted_deepspeed_pickle_is_refused_without_running_code(tmp_path):
    folder = checkpoint_with_rng(tmp_path / "step-00000001")
    marker = tmp_path / "pwned"
    planted = folder / "ds" / "state" / "mp_rank_00_model_states.pt"
    plant(planted, marker)
    write_manifest(folder)
    engine = RecordingEngine([planted])
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        CheckpointManager(folder.parent, DIST).load(engine, folder)
    assert not marker.exists()
    assert isinstance(engine.checkpoint_engine, PlainLoader)  # the engine's own loader is put back


def test_deepspeed_plain_data_types_load_and_trust_uses_deepspeed_own_loader(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    folder = checkpoint_with_rng(tmp_path / "step-00000001")
    state = folder / "ds" / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    payload = {
        "optimizer_state_dict": {
            "loss_scaler": LossScaler(1.0),
            "zero_stage": ZeroStageEnum.gradients,
            "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
            "fp32": [torch.ones(4)],
        },
        "ds_version": "0.19",
    }
    torch.save(payload, state)
    engine = RecordingEngine([state])
    CheckpointManager(folder.parent, DIST).load(engine, folder)
    loaded = engine.loaded[0]["optimizer_state_dict"]
    assert isinstance(loaded["loss_scaler"], LossScaler) and loaded["zero_stage"] == ZeroStageEnum.gradients
    assert torch.equal(loaded["fp32"][0], torch.ones(4))

    # trust=True hands the files to the engine's own loader, as DeepSpeed would.
    class CountingLoader(PlainLoader):
        calls = 0

        def load(self, path, map_location=None):
            CountingLoader.calls += 1
            return super().load(path, map_location)

    engine = RecordingEngine([state])
    engine.checkpoint_engine = CountingLoader()
    CheckpointManager(folder.parent, DIST, trust=True).load(engine, folder)
    assert CountingLoader.calls == 1


@pytest.mark.slow
def test_resuming_a_real_run_refuses_a_planted_deepspeed_file(tmp_path):
    """A real 2-step run; an attacker swaps the optimizer state for a malicious pickle and rewrites the
    manifest. The resumed run stops with an error naming the file, and the code never runs."""
    out = tmp_path / "run"
    cfg = tiny_config(out, "sft", max_steps=1, checkpoint={"every_steps": 1, "keep_last": 0})
    command = [
        sys.executable,
        "-m",
        "vsr_train",
        "train",
        "sft",
        "--config",
        str(write_config(tmp_path / "c.yaml", cfg)),
    ]
    run_checked(command)
    folder = out / "checkpoints" / "step-00000001"
    (optim,) = (folder / "ds" / "state").glob("*optim_states.pt")
    marker = tmp_path / "pwned"
    plant(optim, marker)
    write_manifest(folder)
    verify_checkpoint(folder)  # the checksums are fine: they prove nothing about who wrote the file
    resumed = subprocess.run(
        [*command, "--set", "max_steps=2"], capture_output=True, text=True, timeout=600, env=clean_env()
    )
    assert resumed.returncode != 0
    assert "refused to load" in resumed.stderr and optim.name in resumed.stderr
    assert not marker.exists()
