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


def start(args: list[str], tmp_path: Path, log: Path | None = None, *,
          extra_env: dict[str, str] | None = None, repo: Path = REPO) -> subprocess.Popen:
    """Start the search; its output goes to ``log`` (default: a new file in ``tmp_path``).

    ``extra_env`` adds variables (e.g. ``CNMC_HOLD_AT``); ``repo`` runs another copy's
    ``search/run.py`` (an older version of the code).
    """
    log = log or tmp_path / f"run-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, str(repo / "search" / "run.py"), *args], cwd=repo,
                            env={**env(tmp_path), **(extra_env or {})}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (what it started), nothing else."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def kill_driver(proc: subprocess.Popen, linger: float = 15.0) -> None:
    """``kill -9`` the driver alone, as a crash would; then SIGKILL whatever of its process
    group (its local Ray) is still there after ``linger`` seconds."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    deadline = time.monotonic() + linger
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    stop_group(proc)


def wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 900,
               every: float = 0.05) -> None:
    """Poll ``ready()`` until true while the run is alive; fail with its log otherwise."""
    deadline = time.monotonic() + timeout
    while not ready():
        text = proc.log.read_text()[-3000:]  # type: ignore[attr-defined]
        assert proc.poll() is None, f"the run ended before {what}:\n{text}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{text}"
        time.sleep(every)


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
