"""Shared helpers of the benchmarks: the default data, running a search, reading its trials."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CNMC_REAL_DATA", REPO.parent / "shared" / "data" /
                                   "cnmc-real"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_search(argv: list[str]) -> dict[str, Any]:
    """Run ``search/run.py`` in this process; return its summary and per-trial rows."""
    from search.run import main

    out = Path(argv[argv.index("--out") + 1])
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"search/run.py {' '.join(argv)} exited with {rc}")
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "trials.csv") as fh:
        trials = list(csv.DictReader(fh))
    return {"summary": summary, "trials": trials, "out": out}


def trial_rows(out: Path) -> list[dict[str, Any]]:
    """Per-trial timing rows from Ray Tune's result files (wall-clock seconds)."""
    rows = []
    for d in sorted((out / "tune").glob("trial_*")):
        f = d / "result.json"
        if not f.exists():
            continue
        results = [json.loads(line) for line in f.read_text().splitlines()]
        if not results:
            continue
        first, last = results[0], results[-1]
        rows.append({
            "started_at": first["trial_started_at"], "ended_at": last["reported_at"],
            "first_step_at": first.get("first_step_at"), "pid": last["pid"],
            "node_id": last["node_id"],
            "train_seconds": sum(r.get("train_seconds", 0) for r in results),
            "epochs": last["training_iteration"]})
    return sorted(rows, key=lambda r: r["started_at"])
