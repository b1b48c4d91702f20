"""Run logging: metrics.jsonl (one record per logged step), TensorBoard scalars and a tqdm bar, all on
rank 0 only. Resuming truncates records past the resumed step so the file reads as one clean run.

A run killed while appending a record leaves a torn last line: readers warn and drop it, keeping every
record before it; resuming rewrites the file atomically without it. An unreadable line anywhere else is
damage no kill can cause, and an error naming the line."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from vsr_model.fileio import atomic_write_text
from vsr_train.runtime import DistInfo

log = logging.getLogger(__name__)


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for every record of a metrics file; a torn last line is dropped with a warning."""
    lines = [
        line for line in path.read_bytes().decode("utf-8", errors="replace").splitlines() if line.strip()
    ]
    out = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer step")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if number == len(lines):
                log.warning("%s: dropping its torn last line (%s); the %d records before it are kept",
                            path, exc, len(out))  # fmt: skip
                break
            raise ValueError(f"{path}: record {number} is unreadable ({exc}): the file is damaged") from exc
        out.append((line, record))
    return out


class RunLogger:
    def __init__(
        self,
        output_dir: Path,
        dist: DistInfo,
        total_steps: int,
        tensorboard: bool = True,
        progress_bar: bool = True,
        description: str = "train",
    ) -> None:
        self.dist = dist
        self.path = Path(output_dir) / "metrics.jsonl"
        self._writer = None
        self._bar = None
        self._total = total_steps
        self._tensorboard = tensorboard
        self._progress = progress_bar
        self._description = description
        if dist.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def start(self, first_step: int) -> None:
        """Open sinks; ``first_step`` steps are done. Records past it (left by an interrupted run) are dropped."""
        if not self.dist.is_main:
            return
        if self.path.exists():
            kept = [line for line, record in _records(self.path) if record["step"] <= first_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                log_dir=str(self.path.parent / "tensorboard"), purge_step=first_step + 1
            )
        if self._progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self._total, initial=first_step, desc=self._description, dynamic_ncols=True
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """``step`` is the number of optimizer steps completed. Non-finite values are logged as-is
        (the trainers raise on a non-finite loss before getting here)."""
        if not self.dist.is_main:
            return
        record: dict[str, Any] = {"step": step, "time": time.time()}
        record.update({k: float(v) for k, v in metrics.items()})
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
        if self._writer is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._writer.add_scalar(key, float(value), step)
        if self._bar is not None:
            shown = {k: f"{float(v):.4g}" for k, v in metrics.items() if k in ("loss", "reward/total", "kl")}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._bar is not None:
            self._bar.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, as a kill leaves it, is dropped)."""
    return [record for _, record in _records(Path(path))]
