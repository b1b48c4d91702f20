"""metrics.jsonl survives a kill during a write: the torn last line is dropped with a warning, the
records before it are kept, and the resumed run rewrites the file atomically."""

from __future__ import annotations

import json

import pytest
import torch

from vsr_train.run_log import RunLogger, read_metrics
from vsr_train.runtime import DistInfo

DIST = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def logger(tmp_path) -> RunLogger:
    return RunLogger(tmp_path, DIST, total_steps=10, tensorboard=False, progress_bar=False)


def test_a_torn_last_line_is_dropped_and_the_resumed_run_continues(tmp_path, caplog):
    run = logger(tmp_path)
    run.start(0)
    for step in (1, 2, 3):
        run.log(step, {"loss": 1.0 / step})
    run.close()
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(path.read_bytes() + b'{"step": 4, "time": 17.5, "lo')  # killed mid-write
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert "torn last line" in caplog.text
    resumed = logger(tmp_path)
    resumed.start(2)  # resuming from the checkpoint of step 2
    resumed.log(3, {"loss": 0.5})
    resumed.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert not list(tmp_path.glob(".metrics.jsonl.*"))  # the rewrite left no temp file


def test_an_unreadable_record_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match="record 2 is unreadable"):
        read_metrics(path)
    with pytest.raises(ValueError, match="record 2 is unreadable"):
        logger(tmp_path).start(3)
    assert path.read_text() == '{"step": 1}\n{"step": \n{"step": 3}\n'  # left as it was
