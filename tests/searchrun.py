"""Run ``search/run.py`` as a user would, in a subprocess and process group of its own.

Shared by the search and cluster tests: stopping a run kills its process group (the driver and
the local Ray it started), never anything else on the machine.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ, CNMC_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONUNBUFFERED="1")
    e.pop("RAY_ADDRESS", None)
    return e


def start(args: list[str], tmp_path: Path, log: Path | None = None) -> subprocess.Popen:
    """Start the search; its output goes to ``log`` (default: a new file in ``tmp_path``)."""
    log = log or tmp_path / f"run-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, str(REPO / "search" / "run.py"), *args], cwd=REPO,
                            env=env(tmp_path), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (what it started), nothing else."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """Wait for the run, clean up its group, assert it succeeded; return its output."""
    try:
        proc.wait(timeout=timeout)
    finally:
        stop_group(proc)
    text = proc.log.read_text()  # type: ignore[attr-defined]
    assert proc.returncode == 0, text[-4000:]
    return text


def run(args: list[str], tmp_path: Path, timeout: float = 900) -> str:
    return finish(start(args, tmp_path), timeout)


def trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as fh:
        return list(csv.DictReader(fh))
