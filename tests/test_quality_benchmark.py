"""The real-data quality benchmark: its patient groups, and one ``--quick`` run so it cannot rot.

The quick run trains 2 variants x 3 patient groups x 2 epochs at 32 px on the 240-image real
sample (no dev set); no score is asserted, only that it finishes and names its best variant.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality  # noqa: E402  (benchmarks/ is not a package)


def test_patient_groups_hold_one_normal_patient_each_and_spread_the_all_patients():
    cells = {"H1": 40, "H2": 30, "H3": 20, "a": 50, "b": 40, "c": 30, "d": 20, "e": 10}
    ids = np.repeat(list(cells), list(cells.values()))
    labels = np.array([0 if p.startswith("H") else 1 for p in ids])

    groups = quality.patient_groups(labels, ids)

    assert groups == [["H1", "a"], ["H2", "b", "e"], ["H3", "c", "d"]]
    assert quality.patient_groups(labels[::-1], ids[::-1]) == groups  # order-independent


def test_patient_groups_need_a_normal_patient_per_group():
    ids = np.array(["H1", "H2", "a", "b", "c"])
    with pytest.raises(SystemExit, match="2 normal patient"):
        quality.patient_groups(np.array([0, 0, 1, 1, 1]), ids)


@pytest.mark.slow
def test_quality_benchmark_runs_in_quick_mode(tmp_path, real_data):
    env = dict(os.environ, CNMC_CACHE=str(tmp_path / "cache"), CNMC_REAL_DATA=str(real_data),
               TF_CPP_MIN_LOG_LEVEL="2")
    results = tmp_path / "results.jsonl"
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--quick",
                          "--results", str(results)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600, start_new_session=True)

    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.match(r"^best: (window|cell) \(held-out ROC AUC \d\.\d{3}", last), out.stdout
    assert len(results.read_text().splitlines()) == 2  # one line per (variant, seed)
    assert "| window | 0 |" in out.stdout and "| cell | 0 |" in out.stdout
