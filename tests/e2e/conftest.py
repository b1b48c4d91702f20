"""The tiny `vsr demo` run, made once per test session and shared by the end-to-end tests (it takes
minutes; the demo test checks its artifacts and resume, the browser test opens its report)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def run_demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vsr_index.cli", "demo", "--size", "tiny", "--out", str(out), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=1800,
    )


@dataclass
class DemoRun:
    out: Path
    result: subprocess.CompletedProcess

    def check(self) -> Path:
        assert self.result.returncode == 0, self.result.stdout[-3000:] + self.result.stderr[-3000:]
        return self.out


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("tiny_demo") / "demo"
    return DemoRun(out, run_demo(out))


@pytest.fixture(scope="session")
def run_tiny_demo():
    """Runs the same tiny demo into another folder (or again into the same one, to resume)."""
    return run_demo
