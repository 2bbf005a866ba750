"""The layering of the house: the library never imports the search layer, and the light modules
do not import TensorFlow. Each check imports in a fresh interpreter, so nothing else this test
session imported can hide or fake an import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LIBRARY = ["leukemia", "leukemia.store", "leukemia.imaging", "leukemia.files", "leukemia.folds",
           "leukemia.train", "leukemia.cli", "leukemia.models",
           "leukemia.evaluate", "leukemia.dataset", "leukemia.config", "leukemia.pipeline",
           "leukemia.metrics"]


def _modules_after_import(modules: list[str]) -> set[str]:
    code = (f"import importlib, json, sys\n"
            f"for m in {modules!r}:\n"
            f"    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_library_does_not_import_ray_or_optuna():
    loaded = _modules_after_import(LIBRARY)
    assert "leukemia.train" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("ray", "optuna", "search")}


def test_models_and_config_do_not_import_tensorflow():
    loaded = _modules_after_import(["leukemia.models", "leukemia.config"])
    assert "leukemia.models" in loaded and "leukemia.config" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("tensorflow", "keras")}
