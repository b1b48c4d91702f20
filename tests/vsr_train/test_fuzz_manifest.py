"""Fuzz (CI fuzz job, `pytest -m fuzz`): checkpoint manifests and trainer states of arbitrary content
are verified or refused with a CheckpointError; never another exception, never a file outside the
checkpoint folder read."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsr_train.checkpoint import (
    MANIFEST,
    CheckpointError,
    CheckpointManager,
    verify_checkpoint,
    write_manifest,
)
from vsr_train.runtime import DistInfo

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DIST = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=10))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
# Paths a hostile manifest might list: real files, missing ones, escapes, absolute paths, odd names.
paths = st.one_of(
    st.sampled_from(["trainer_state.json", "ds/state/model.pt", "MANIFEST.json", "../outside.txt", "/etc/hostname",
                     "ds/../../outside.txt", "", ".", "ds", "link_out"]),
    st.text(max_size=12),
)  # fmt: skip
entries = st.one_of(
    st.fixed_dictionaries({"size": st.one_of(st.integers(-5, 10**6), json_values), "sha256": st.one_of(st.text(max_size=64), json_values)}),
    json_values,
)  # fmt: skip


def make_checkpoint(folder):
    (folder / "ds" / "state").mkdir(parents=True)
    (folder / "ds" / "state" / "model.pt").write_bytes(b"weights" * 10)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1, "world_size": 1}))
    (folder.parent / "outside.txt").write_text("not part of any checkpoint")
    (folder / "link_out").symlink_to(folder.parent / "outside.txt")
    write_manifest(folder)
    return folder


@FUZZ
@given(
    manifest=st.one_of(
        st.fixed_dictionaries(
            {"format_version": st.one_of(st.just(1), json_values), "files": st.one_of(st.dictionaries(paths, entries, max_size=4), json_values)}
        ),
        json_values,
    ),
    raw=st.one_of(st.none(), st.binary(max_size=60)),
)  # fmt: skip
def test_arbitrary_manifests_verify_or_are_refused(tmp_path_factory, manifest, raw):
    folder = make_checkpoint(tmp_path_factory.mktemp("ck") / "step-00000001")
    (folder / MANIFEST).write_bytes(raw if raw is not None else json.dumps(manifest).encode())
    try:
        verify_checkpoint(folder)
    except CheckpointError:
        return
    # Accepted: then it lists only real files inside the folder, with their true sizes.
    files = json.loads((folder / MANIFEST).read_text())["files"]
    for rel, meta in files.items():
        path = (folder / rel).resolve()
        assert path.is_relative_to(folder.resolve()) and path.is_file()
        assert path.stat().st_size == meta["size"]


@FUZZ
@given(state=json_values, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_arbitrary_trainer_states_load_or_are_refused(tmp_path_factory, state, raw):
    folder = make_checkpoint(tmp_path_factory.mktemp("ck") / "step-00000001")
    (folder / "trainer_state.json").write_bytes(raw if raw is not None else json.dumps(state).encode())

    class NoEngine:
        def load_checkpoint(self, *args, **kwargs):
            raise AssertionError("reached the engine with an unreadable trainer state")

    try:
        CheckpointManager(folder.parent, DIST).load(NoEngine(), folder)
    except CheckpointError:
        return
    except AssertionError:
        # Only a well-formed state with an integer step and the run's world size may get this far.
        loaded = json.loads((folder / "trainer_state.json").read_bytes())
        assert isinstance(loaded, dict) and isinstance(loaded["step"], int) and loaded["world_size"] == 1
