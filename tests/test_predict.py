"""Tests for scoring a saved model: ``leukemia predict`` on real C-NMC image files (the crop and
the threshold stored in the model, ``--threshold``, ``--csv``, the per-patient summary),
``evaluate_model`` at the stored threshold and at 0.5, and model files that cannot be read.

Random-init ``small_cnn`` members at 32 px: no training, a few seconds per test.

    .venv/bin/python -m pytest -q tests/test_predict.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from leukemia import metrics as M
from leukemia.cli import main
from leukemia.evaluate import evaluate_model
from leukemia.models import create_backbone, export_model, load_model
from leukemia.store import Store, decode_image
from leukemia.train import predict_proba, save_model

SIZE = 32


def _member(seed: int = 0):
    """A small_cnn whose P(ALL) spreads over (0, 1) (a fresh one scores every cell ~0.5)."""
    import keras

    keras.utils.set_random_seed(seed)
    m = create_backbone("small_cnn", image_size=SIZE, dropout=0.0)
    head = m.get_layer("p_all")
    w, b = head.get_weights()
    head.set_weights([w * 200.0, b])
    return m


def _export(path: Path, *, crop: str = "cell", window: int | None = None,
            threshold: float = 0.5, seed: int = 0) -> Path:
    """Save a one-member, TTA-on export of ``_member(seed)`` to ``path``."""
    save_model(export_model([_member(seed)], crop=crop, window=window, threshold=threshold,
                            tta=True, info={"source": "test"}), path)
    return path


def _between(p: np.ndarray) -> float:
    """A threshold between two of the scores ``p`` that calls some cells ALL and some normal,
    and some cell otherwise than 0.5 does."""
    q = np.unique(p)
    for t in sorted((q[1:] + q[:-1]) / 2, key=lambda t: abs(t - np.median(p))):
        calls = p >= t
        if calls.any() and not calls.all() and (calls != (p >= 0.5)).any():
            return float(t)
    raise AssertionError(f"no threshold splits these scores unlike 0.5 does: {p}")


def _predict(capsys, model: Path, files: list[Path], *extra: str) -> tuple[list, str]:
    """Run ``leukemia predict``; return its ``(path, p_all, class)`` lines and its stderr."""
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, files), *extra]) == 0
    out = capsys.readouterr()
    rows = [line.split("\t") for line in out.out.strip().splitlines()]
    return [(Path(path), float(p), cls) for path, p, cls in rows], out.err


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cells(real_data) -> list[Path]:
    """Ten real training BMPs (450 px frames): 6 of ALL patient 11, 4 of normal patient H11."""
    fold = real_data / "C-NMC_Leukemia" / "training_data" / "fold_0"
    files = sorted(fold.glob("all/UID_11_*.bmp"))[:6] + sorted(fold.glob("hem/UID_H11_*.bmp"))[:4]
    assert len(files) == 10, files
    return files


@pytest.fixture(scope="module")
def unnamed_cells(real_data) -> list[Path]:
    """Three real validation BMPs (named 1.bmp, 2.bmp, ...: no patient in the name)."""
    folder = real_data / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data"
    return sorted(folder.glob("*.bmp"))[:3]


# ---------------------------------------------------------------------------------------------
# the crop stored in the model


def test_predict_prepares_images_with_the_crop_stored_in_the_model(tmp_path, capsys, cells):
    scores = {}
    for crop, window in (("cell", None), ("window", 200)):
        path = _export(tmp_path / f"{crop}.keras", crop=crop, window=window)
        _predict(capsys, path, cells, "--csv", str(tmp_path / f"{crop}.csv"))
        got = np.asarray([float(r["p_all"]) for r in _read_csv(tmp_path / f"{crop}.csv")])
        model = load_model(str(path))
        pixels = np.stack([decode_image(str(f), SIZE, crop, window=window)[0] for f in cells])
        np.testing.assert_allclose(got, model.predict(pixels, verbose=0).reshape(-1), atol=2e-6,
                                   err_msg=crop)
        if crop == "window":  # the stored 200 px window, not the default 320 px one
            default = np.stack([decode_image(str(f), SIZE, "window", window=320)[0]
                                for f in cells])
            assert np.abs(got - model.predict(default, verbose=0).reshape(-1)).max() > 1e-3
        scores[crop] = got
    # the same network scores the same files differently under the two crops
    assert np.abs(scores["cell"] - scores["window"]).max() > 0.01, scores


def test_predict_crop_flag_overrides_the_stored_crop(tmp_path, capsys, cells):
    path = _export(tmp_path / "m.keras", crop="cell")
    rows, _ = _predict(capsys, path, cells[:3], "--crop", "none")
    pixels = np.stack([decode_image(str(f), SIZE, "none")[0] for f in cells[:3]])
    expected = load_model(str(path)).predict(pixels, verbose=0).reshape(-1)
    np.testing.assert_allclose([p for _, p, _ in rows], expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the class column: the stored threshold, or --threshold


@pytest.fixture(scope="module")
def scores(tmp_path_factory, cells) -> np.ndarray:
    """P(ALL) of ``_member(0)`` (cell crop, TTA) for ``cells``: thresholds are chosen from it."""
    path = _export(tmp_path_factory.mktemp("scores") / "m.keras")
    return np.asarray([p for _, p in _predict_files(path, cells)])


def _predict_files(path: Path, files: list[Path]) -> list[tuple[Path, float]]:
    from leukemia.evaluate import predict_files

    return list(predict_files(path, files))


def test_predict_class_follows_the_threshold_stored_in_the_model(tmp_path, capsys, cells,
                                                                  scores):
    t = _between(scores)
    rows, err = _predict(capsys, _export(tmp_path / "t.keras", threshold=t), cells)
    assert [p for _, p, _ in rows] == pytest.approx(scores, abs=1e-4)
    assert [c for _, _, c in rows] == ["ALL" if p >= t else "normal" for p in scores]
    assert {c for _, _, c in rows} == {"ALL", "normal"}
    assert [c for _, _, c in rows] != ["ALL" if p >= 0.5 else "normal" for p in scores]
    assert f"P(ALL) >= {t:.3f} (stored in the model)" in err


def test_predict_threshold_zero_calls_every_cell_all(tmp_path, capsys, cells):
    rows, _ = _predict(capsys, _export(tmp_path / "zero.keras", threshold=0.0), cells)
    assert [c for _, _, c in rows] == ["ALL"] * len(cells)


def test_predict_threshold_flag_overrides_the_stored_threshold(tmp_path, capsys, cells, scores):
    path = _export(tmp_path / "zero.keras", threshold=0.0)
    t = _between(scores)
    rows, err = _predict(capsys, path, cells, "--threshold", str(t))
    assert [c for _, _, c in rows] == ["ALL" if p >= t else "normal" for p in scores]
    assert "normal" in {c for _, _, c in rows}
    assert "(--threshold)" in err
    rows, _ = _predict(capsys, path, cells, "--threshold", "1.0")
    assert [c for _, _, c in rows] == ["ALL" if p >= 1.0 else "normal" for p in scores]


# ---------------------------------------------------------------------------------------------
# --csv and the per-patient summary


def test_predict_csv_writes_path_p_all_class_rows(tmp_path, capsys, cells, scores):
    t = _between(scores)
    out = tmp_path / "sub" / "predictions.csv"
    rows, err = _predict(capsys, _export(tmp_path / "m.keras", threshold=t), cells,
                         "--csv", str(out))
    assert out.read_text().splitlines()[0] == "path,p_all,class"
    written = _read_csv(out)
    assert [Path(r["path"]) for r in written] == cells
    assert [float(r["p_all"]) for r in written] == pytest.approx(scores, abs=1e-6)
    assert [r["class"] for r in written] == [c for _, _, c in rows]
    assert [r["class"] for r in written] == ["ALL" if p >= t else "normal" for p in scores]
    assert f"wrote {out}" in err


def test_predict_csv_quotes_a_path_with_a_comma(tmp_path, capsys, cells):
    odd = tmp_path / "cells, batch 2" / "UID_11_1_1_all.bmp"
    odd.parent.mkdir()
    odd.write_bytes(cells[0].read_bytes())
    _predict(capsys, _export(tmp_path / "m.keras"), [odd], "--csv", str(tmp_path / "p.csv"))
    assert [Path(r["path"]) for r in _read_csv(tmp_path / "p.csv")] == [odd]


def test_predict_summarises_each_patient_named_in_the_files(tmp_path, capsys, cells, scores):
    t = _between(scores)
    _, err = _predict(capsys, _export(tmp_path / "m.keras", threshold=t), cells)
    assert f"per patient (threshold {t:.3f})" in err
    lines = {line.split("\t")[0]: line.split("\t") for line in err.splitlines()
             if line.count("\t") == 3}
    for patient, sl in (("11", slice(0, 6)), ("H11", slice(6, 10))):
        p = scores[sl]
        assert lines[patient][1:] == [str(len(p)), f"{p.mean():.4f}", f"{(p >= t).mean():.3f}"]


def test_predict_without_patient_names_prints_no_summary(tmp_path, capsys, unnamed_cells):
    rows, err = _predict(capsys, _export(tmp_path / "m.keras"), unnamed_cells)
    assert len(rows) == len(unnamed_cells)
    assert "per patient" not in err


def test_predict_reads_the_images_in_a_folder(tmp_path, capsys, cells):
    folder = tmp_path / "cells"
    (folder / "deeper").mkdir(parents=True)
    copies = [folder / cells[0].name, folder / "deeper" / cells[6].name]
    for src, dest in zip((cells[0], cells[6]), copies):
        dest.write_bytes(src.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    rows, err = _predict(capsys, _export(tmp_path / "m.keras"), [folder])
    assert sorted(path for path, _, _ in rows) == sorted(copies)
    assert "2 image(s)" in err


def test_predict_unreadable_image_exits_2_naming_it(tmp_path, capsys, cells):
    bad = tmp_path / "UID_11_99_1_all.bmp"
    bad.write_bytes(cells[0].read_bytes()[:40])  # a BMP header, no pixels
    capsys.readouterr()
    assert main(["predict", str(_export(tmp_path / "m.keras")), str(cells[0]), str(bad)]) == 2
    assert f"error: {bad}: not a readable image" in capsys.readouterr().err


def test_predict_missing_input_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-cell.bmp"
    capsys.readouterr()
    assert main(["predict", str(_export(tmp_path / "m.keras")), str(missing)]) == 2
    assert f"error: {missing}: no such file or folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# evaluate: the stored threshold and 0.5


def test_evaluate_model_scores_at_the_stored_threshold_and_at_half(tmp_path, real_store):
    store = Store(real_store)
    val = store.load("validation")
    crop, window = store.crop
    plain = _export(tmp_path / "plain.keras", crop=crop, window=window)
    p = predict_proba(load_model(str(plain)), val.images)
    t = _between(p)
    path = _export(tmp_path / "m.keras", crop=crop, window=window, threshold=t)

    metrics = evaluate_model(path, real_store)
    at_t = M.binary_metrics(val.labels, p, val.patient_ids, threshold=t)
    at_half = M.binary_metrics(val.labels, p, val.patient_ids, threshold=0.5)
    assert at_t["confusion_matrix"] != at_half["confusion_matrix"]  # t makes a difference
    assert metrics["threshold"] == pytest.approx(t)
    assert metrics["confusion_matrix"] == at_t["confusion_matrix"]
    assert metrics["weighted_f1"] == pytest.approx(at_t["weighted_f1"])
    assert metrics["at_0.5"]["threshold"] == 0.5
    assert metrics["at_0.5"]["confusion_matrix"] == at_half["confusion_matrix"]
    assert metrics["at_0.5"]["weighted_f1"] == pytest.approx(at_half["weighted_f1"])
    assert metrics["model_crop"] == metrics["store_crop"] == [crop, window]
    assert json.loads((tmp_path / "metrics-validation.json").read_text()) == metrics


def test_cli_evaluate_threshold_flag_overrides_the_stored_one(tmp_path, real_store, capsys):
    crop, window = Store(real_store).crop
    path = _export(tmp_path / "m.keras", crop=crop, window=window, threshold=0.0)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(path), "--store", real_store, "--out", str(out),
                 "--threshold", "0.25"]) == 0
    written = json.loads(out.read_text())
    assert written["threshold"] == 0.25 and written["at_0.5"]["threshold"] == 0.5


# ---------------------------------------------------------------------------------------------
# a model file that is missing or cannot be read


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    return _export(tmp_path_factory.mktemp("good") / "m.keras").read_bytes()


@pytest.mark.parametrize("damage", ["missing", "truncated", "random_bytes"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_missing_or_corrupt_model_exits_2_naming_the_file(tmp_path, capsys, cells,
                                                              real_store, model_bytes, command,
                                                              damage):
    path = tmp_path / "models" / "final.keras"
    path.parent.mkdir()
    if damage == "truncated":
        path.write_bytes(model_bytes[: len(model_bytes) * 2 // 3])
    elif damage == "random_bytes":
        path.write_bytes(np.random.default_rng(1).bytes(len(model_bytes)))
    args = [str(path), *map(str, cells[:2])] if command == "predict" else \
        [str(path), "--store", real_store]
    capsys.readouterr()
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " in err
    assert ("no such model file" if damage == "missing" else "not a readable .keras model") in err
    assert not (tmp_path / "models" / "metrics-validation.json").exists()
