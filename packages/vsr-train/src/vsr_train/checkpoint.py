"""Atomic, verified checkpoints of a DeepSpeed training run.

Layout of one checkpoint (``<run>/checkpoints/step-00000100/``)::

    ds/             DeepSpeed engine state: model shards + optimizer + LR schedule (engine.save_checkpoint)
    hf/             the model in Hugging Face format (save_pretrained), ready for evaluation or export
    rng/rank-*.npz  each rank's RNG states (python, numpy, torch, CUDA) as plain arrays
    trainer_state.json   step, data order position, world size, config snapshot
    MANIFEST.json   every file above with its size and sha256; written LAST

Everything is written into ``.tmp-step-00000100``; only when every rank has finished and the manifest is
on disk does rank 0 rename the folder to its final name. A folder without a manifest, with a missing file
or a checksum mismatch is refused with an error naming the problem; it is never loaded. The checkpoint
folder must be on a filesystem every rank can see (as usual for multi-node DeepSpeed checkpoints).

The manifest detects partial and corrupted checkpoints, not tampered ones: anyone who can write a file
can recompute its checksum. So nothing here unpickles arbitrary objects: RNG states are arrays
(``np.load(allow_pickle=False)``); DeepSpeed's files are read by torch's ``weights_only`` unpickler with
an allow-list of DeepSpeed's own plain data types (``deepspeed_safe_types()``), so a planted file is
refused without running code. A checkpoint holding other types loads only with ``trust=True``
(``vsr train ... --trust-checkpoint``), which hands it to DeepSpeed's own loader: trusted input only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsr_model.fileio import atomic_write, atomic_write_json
from vsr_train.runtime import DistInfo, barrier, broadcast_object

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupted."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def write_manifest(folder: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format_version": FORMAT_VERSION, "files": files}
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def verify_checkpoint(folder: Path, checksums: bool = True) -> None:
    """Raise CheckpointError unless ``folder`` is a complete checkpoint whose files match the manifest."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"checkpoint {folder} has no {MANIFEST}: it is partial (the save did not finish)"
        )
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files = manifest["files"]
        version = manifest["format_version"]
    except (ValueError, KeyError, TypeError) as exc:  # JSON and Unicode errors are ValueErrors
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST}: {exc}") from exc
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"checkpoint {folder}: manifest format {version!r}, this code reads {FORMAT_VERSION}"
        )
    if not isinstance(files, dict):
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST}: 'files' is not a mapping")
    root = folder.resolve()
    for rel, meta in files.items():
        # Only files inside the folder: no absolute paths, no '..', no links leading out of it.
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or rel == MANIFEST:
            raise CheckpointError(
                f"checkpoint {folder}: the manifest lists {rel!r}, not a file of the checkpoint"
            )
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("size"), int)
            and not isinstance(meta.get("size"), bool)
            and isinstance(meta.get("sha256"), str)
        ):
            raise CheckpointError(f"checkpoint {folder}: the manifest entry of {rel} is not {{size, sha256}}")
        path = folder / rel
        if not path.resolve().is_relative_to(root):
            raise CheckpointError(f"checkpoint {folder}: {rel} leads outside the checkpoint folder")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: file {rel} listed in the manifest is missing")
        size = path.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"checkpoint {folder}: file {rel} has {size} bytes, the manifest says {meta['size']}"
            )
        if checksums and _sha256(path) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: file {rel} fails its sha256 check (corrupted)")
    for required in (TRAINER_STATE, "ds"):
        if required not in files and not any(k.startswith(required + "/") for k in files):
            raise CheckpointError(f"checkpoint {folder}: the manifest lists no {required}")


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file_name(rank: int) -> str:
    return f"rank-{rank:05d}.npz"


def save_rng_state(path: Path, state: dict[str, Any]) -> None:
    """Write an RNG state (``rng_state()``) as plain arrays: loading it can never run code."""
    version, internal, gauss = state["python"]
    name, key, pos, has_gauss, cached = state["numpy"]
    arrays = {
        "python_version": np.array(version, dtype=np.int64),
        "python_internal": np.array(internal, dtype=np.int64),
        "python_gauss": np.array([] if gauss is None else [gauss], dtype=np.float64),
        "numpy_name": np.array(name),
        "numpy_key": np.asarray(key, dtype=np.uint32),
        "numpy_counters": np.array([pos, has_gauss], dtype=np.int64),
        "numpy_gauss": np.array(cached, dtype=np.float64),
        "torch": state["torch"].numpy(),
    }
    if "cuda" in state:
        arrays["cuda"] = np.stack([s.numpy() for s in state["cuda"]])
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_rng_state(path: Path) -> dict[str, Any]:
    """Read an RNG state written by ``save_rng_state``; anything else (an object array, which would
    need unpickling, or arrays of the wrong kind) is a CheckpointError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {key: z[key] for key in z.files}
        gauss = a["python_gauss"]
        state: dict[str, Any] = {
            "python": (
                int(a["python_version"]),
                tuple(int(v) for v in a["python_internal"]),
                float(gauss[0]) if gauss.size else None,
            ),
            "numpy": (
                str(a["numpy_name"]),
                np.asarray(a["numpy_key"], dtype=np.uint32),
                int(a["numpy_counters"][0]),
                int(a["numpy_counters"][1]),
                float(a["numpy_gauss"]),
            ),
            "torch": torch.from_numpy(np.array(a["torch"], dtype=np.uint8)),
        }
        if a["python_internal"].shape != (625,) or a["numpy_key"].shape != (624,) or a["torch"].ndim != 1:
            raise ValueError("arrays of the wrong shape")
        if "cuda" in a:
            state["cuda"] = [torch.from_numpy(np.array(row, dtype=np.uint8)) for row in a["cuda"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a valid RNG state file ({exc})") from exc
    return state


def _numpy_array_types() -> list[Any]:
    """What a pickled numpy array needs besides tensors (numpy 1.x and 2.x spellings)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _load_legacy_rng_state(path: Path, trust: bool) -> dict[str, Any]:
    """RNG states of checkpoints written before ``.npz``: a torch pickle of python/numpy/torch states,
    read by the weights-only unpickler with numpy's array types allowed (untrusted input is fine)."""
    try:
        if trust:
            return torch.load(path, weights_only=False)
        with torch.serialization.safe_globals(_numpy_array_types()):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: refused to load this RNG state: it holds more than plain arrays and tensors, and "
            f"unpickling it could run code ({exc}). Resume with --trust-checkpoint only if you trust it."
        ) from exc


def deepspeed_safe_types() -> list[Any]:
    """Plain data types DeepSpeed pickles into its checkpoint files besides tensors and Python
    containers (found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on checkpoints of
    every preset: ZeRO-1/2/3 and 3-offload, fp32 and bf16). Allowing a type lets the weights-only
    unpickler rebuild instances of it from data; none of them runs code when rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, *_numpy_array_types()]


class AllowListedCheckpointEngine:
    """DeepSpeed's checkpoint engine with ``load`` restricted to torch's weights-only unpickler and
    ``deepspeed_safe_types()``; everything else (saving, commit) is the wrapped engine's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(deepspeed_safe_types()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refused to load {path}: it holds types outside the allow-list of plain DeepSpeed data, "
                f"and unpickling them could run code ({exc}). If you trust this checkpoint, resume with "
                "--trust-checkpoint."
            ) from exc


@contextlib.contextmanager
def _checkpoint_loader(engine: Any, trust: bool, folder: Path) -> Iterator[None]:
    """Within the block, the engine reads checkpoint files through the allow-listed loader (or, with
    ``trust``, through DeepSpeed's own, which unpickles anything)."""
    original = getattr(engine, "checkpoint_engine", None)
    if trust or original is None:
        if trust:
            log.warning(
                "loading %s with DeepSpeed's own loader (trust_checkpoint): its pickles can run code; "
                "this is only safe for checkpoints you wrote or otherwise trust",
                folder,
            )
        yield
        return
    engine.checkpoint_engine = AllowListedCheckpointEngine(original)
    try:
        yield
    finally:
        engine.checkpoint_engine = original


class CheckpointManager:
    """Saves and restores (DeepSpeed engine, HF model, RNG, trainer state) for one run folder."""

    def __init__(
        self,
        root: Path,
        dist: DistInfo,
        keep_last: int = 2,
        verify_checksums: bool = True,
        trust: bool = False,
    ) -> None:
        """``trust``: load DeepSpeed files with DeepSpeed's own (unrestricted) unpickler, for trusted
        checkpoints holding types outside ``deepspeed_safe_types()``."""
        self.root = Path(root)
        self.dist = dist
        self.keep_last = keep_last
        self.verify_checksums = verify_checksums
        self.trust = trust

    # -- discovery ------------------------------------------------------------------------------------------

    def complete_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def partial_saves(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(".tmp-step-"))

    def latest(self) -> Path | None:
        steps = self.complete_steps()
        return self.root / step_dir_name(steps[-1]) if steps else None

    # -- save -----------------------------------------------------------------------------------------------

    def save(
        self,
        engine,
        step: int,
        trainer_state: dict[str, Any],
        save_hf: Callable[[Any, Path, bool], None] | None,
    ) -> Path:
        """Collective: every rank calls it, and ``save_hf(engine, folder, is_main)`` on every rank (it
        gathers the weights where they are sharded; rank 0 writes the folder)."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if self.dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier()
        engine.save_checkpoint(str(tmp / "ds"), tag="state", client_state={}, save_latest=False)
        if save_hf is not None:
            save_hf(engine, tmp / "hf", self.dist.is_main)
        (tmp / "rng").mkdir(exist_ok=True)
        save_rng_state(tmp / "rng" / rng_file_name(self.dist.rank), rng_state())
        barrier()
        if self.dist.is_main:
            state = dict(
                trainer_state, step=step, world_size=self.dist.world_size, format_version=FORMAT_VERSION
            )
            write_json_atomic(tmp / TRAINER_STATE, state)
            write_manifest(tmp)
            if final.exists():
                # Re-saving a step (after resuming from an earlier checkpoint): replace the old folder whole.
                trash = self.root / f".trash-{step_dir_name(step)}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash)
            else:
                os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
            log.info("saved checkpoint %s", final)
        barrier()
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for step in self.complete_steps()[: -self.keep_last]:
            shutil.rmtree(self.root / step_dir_name(step))

    # -- load -----------------------------------------------------------------------------------------------

    def resolve_resume(self, resume: str) -> Path | None:
        """The checkpoint to resume from for the ``checkpoint.resume`` setting, verified on rank 0.
        Interrupted saves (``.tmp-step-*``) are reported and ignored; a corrupted complete-looking
        checkpoint is an error (never a silent fall-back to an older one)."""
        if resume == "never":
            if self.dist.is_main and self.complete_steps():
                raise CheckpointError(
                    f"{self.root} already holds checkpoints but checkpoint.resume is 'never'; "
                    "use a new output_dir or resume: auto"
                )
            return None
        target = self.latest() if resume == "auto" else Path(resume)
        for partial in self.partial_saves():
            if self.dist.is_main:
                log.warning(
                    "ignoring interrupted checkpoint save %s (no manifest; it was never complete)", partial
                )
        if target is None:
            return None
        error = None
        if self.dist.is_main:
            try:
                verify_checkpoint(target, checksums=self.verify_checksums)
            except CheckpointError as exc:
                error = str(exc)
        error = broadcast_object(error)
        if error is not None:
            raise CheckpointError(error)
        return target

    def load(self, engine, folder: Path) -> dict[str, Any]:
        """Restore engine (model, optimizer, schedule) and this rank's RNG; return the trainer state."""
        try:
            state = json.loads((folder / TRAINER_STATE).read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {folder}: unreadable {TRAINER_STATE}: {exc}") from exc
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise CheckpointError(f"checkpoint {folder}: {TRAINER_STATE} holds no integer step")
        if state.get("world_size") != self.dist.world_size:
            raise CheckpointError(
                f"checkpoint {folder} was written by {state.get('world_size')} ranks, this run has "
                f"{self.dist.world_size}: exact resume (data order, per-rank RNG) needs the same world size"
            )
        # The RNG state is checked before DeepSpeed loads anything, so a bad one changes nothing.
        rng_file = folder / "rng" / rng_file_name(self.dist.rank)
        legacy = folder / "rng" / f"rank-{self.dist.rank:05d}.pt"
        if rng_file.is_file():
            rng = load_rng_state(rng_file)
        elif legacy.is_file():
            rng = _load_legacy_rng_state(legacy, self.trust)
        else:
            raise CheckpointError(f"checkpoint {folder}: missing RNG state {rng_file.name}")
        with _checkpoint_loader(engine, self.trust, folder):
            load_path, _ = engine.load_checkpoint(
                str(folder / "ds"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
            )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the engine state from {folder / 'ds'}")
        set_rng_state(rng)
        return state

    def resume(self, engine, order, resume: str) -> tuple[int, Path | None]:
        """Restore the run `resume` points at (engine, RNG, data order); return (step, folder), or
        (0, None) when there is nothing to resume."""
        folder = self.resolve_resume(resume)
        if folder is None:
            return 0, None
        state = self.load(engine, folder)
        order.load_state_dict(state["data_order"])
        step = int(state["step"])
        log.info("resumed from %s at step %d", folder, step)
        return step, folder
