"""Every benchmark runs once in its quick mode, so none of them rots.

No timing is asserted (machines are noisy): only that each script finishes and prints its
headline figure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADLINES = {
    "store_read.py": r"^ratio: \d+(\.\d+)?$",
    "backbones.py": r"^ratio: \d+(\.\d+)?$",
    "ingest.py": r"^ratio: \d+(\.\d+)?$",
    "trial_overhead.py": r"^ratio: \d+(\.\d+)?$",
    "asha.py": r"^score_gap: -?\d+(\.\d+)?$",
    "utilization.py": r"^utilization: \d+(\.\d+)?$",
    "gpu_packing.py": r"^(ratio: \d+(\.\d+)?|skipped: no NVIDIA GPU.*)$",
    "selection.py": r"^best: (objective|wf1_at_0\.5|wf1_at_best_threshold|roc_auc)$",
    "scratch.py": r"^ratio: \d+(\.\d+)?$",
    "store_memory.py": r"^ratio: \d+(\.\d+)?$",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(HEADLINES))
def test_benchmark_runs_in_quick_mode(script, tmp_path, real_data):
    env = dict(os.environ, CNMC_CACHE=str(tmp_path / "cache"), CNMC_REAL_DATA=str(real_data),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                         start_new_session=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.match(HEADLINES[script], last), out.stdout
