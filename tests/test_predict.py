"""Tests for scoring a saved model: ``leukemia predict`` on real C-NMC image files (the crop and
the decision rule stored in the model, ``--rule``, ``--threshold``, ``--neighbours``, ``--csv``,
the per-patient call and ``--patients-csv``), ``evaluate_model`` under the stored rule and at
0.5, the neighbour correction on hand-made features, and model files that cannot be read.

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
from leukemia.evaluate import (
    PATIENT_CALL_SHARE,
    evaluate_model,
    model_features,
    neighbour_correction,
)
from leukemia.imaging import decode_image
from leukemia.models import create_backbone, export_model, load_model
from leukemia.rules import Rule, prior_cut
from leukemia.store import Store
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
            threshold: float = 0.5, seed: int = 0, rule: Rule | None = None) -> Path:
    """Save a one-member, TTA-on export of ``_member(seed)`` to ``path``."""
    save_model(export_model([_member(seed)], crop=crop, window=window, threshold=threshold,
                            tta=True, info={"source": "test"},
                            rule=None if rule is None else rule.to_dict()), path)
    return path


def _between(p: np.ndarray, unlike: np.ndarray | None = None) -> float:
    """A threshold between two of the scores ``p`` that calls some cells ALL and some normal,
    and some cell otherwise than 0.5 does (than the same threshold on ``unlike``, if given)."""
    q = np.unique(p)
    for t in sorted((q[1:] + q[:-1]) / 2, key=lambda t: abs(t - np.median(p))):
        calls = p >= t
        other = p >= 0.5 if unlike is None else unlike >= t
        if calls.any() and not calls.all() and (calls != other).any():
            return float(t)
    raise AssertionError(f"no threshold splits these scores unlike {unlike} does: {p}")


def _top(p: np.ndarray, n: int) -> list[str]:
    """Classes calling the ``n`` highest scores of ``p`` ALL (``p`` without ties)."""
    assert len(np.unique(p)) == len(p), p
    return ["ALL" if r >= len(p) - n else "normal" for r in np.argsort(np.argsort(p))]


def _predict(capsys, model: Path, files: list[Path], *extra: str) -> tuple[list, str]:
    """Run ``leukemia predict``; return its ``(path, p_all, class)`` lines (``p_all`` as the
    model scored the cell, whatever follows it left off) and its stderr."""
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, files), *extra]) == 0
    out = capsys.readouterr()
    rows = [line.split("\t") for line in out.out.strip().splitlines()]
    return [(Path(path), float(p), cls) for path, p, cls, *_ in rows], out.err


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
    assert f"P(ALL) >= {t:.3f}; decided by rule threshold (stored in the model)" in err


def test_predict_threshold_zero_calls_every_cell_all(tmp_path, capsys, cells):
    rows, _ = _predict(capsys, _export(tmp_path / "zero.keras", threshold=0.0), cells)
    assert [c for _, _, c in rows] == ["ALL"] * len(cells)


def test_predict_threshold_flag_overrides_the_stored_threshold(tmp_path, capsys, cells, scores):
    path = _export(tmp_path / "zero.keras", threshold=0.0)
    t = _between(scores)
    rows, err = _predict(capsys, path, cells, "--threshold", str(t))
    assert [c for _, _, c in rows] == ["ALL" if p >= t else "normal" for p in scores]
    assert "normal" in {c for _, _, c in rows}
    assert f"decided by rule threshold (--threshold): threshold {t:.3f}" in err
    rows, _ = _predict(capsys, path, cells, "--threshold", "1.0")
    assert [c for _, _, c in rows] == ["ALL" if p >= 1.0 else "normal" for p in scores]


# ---------------------------------------------------------------------------------------------
# the decision rule stored in the model, and --rule


def test_predict_applies_the_prior_rule_stored_in_the_model(tmp_path, capsys, cells, scores):
    t = _between(scores)
    path = _export(tmp_path / "prior.keras",
                   rule=Rule("prior", prior=0.3, threshold=t, min_batch=10))
    out = tmp_path / "p.csv"
    rows, err = _predict(capsys, path, cells, "--csv", str(out))
    assert [c for _, _, c in rows] == _top(scores, 3)  # 30% of the 10 cells called ALL
    assert {r["rule"] for r in _read_csv(out)} == {"prior"}
    cut = prior_cut(scores, 0.3)
    assert (f"P(ALL) >= {cut:.3f}; decided by rule prior (stored in the model): prior matching "
            f"over 10 cells: 30% called ALL, cut {cut:.3f}") in err
    # below min_batch the stored threshold decides, and the output says so
    rows, err = _predict(capsys, path, cells[1:], "--csv", str(out))
    assert [c for _, _, c in rows] == ["ALL" if p >= t else "normal" for p in scores[1:]]
    assert f"prior needs >= 10 cells, the batch has 9: threshold {t:.3f} decided" in err
    assert {r["rule"] for r in _read_csv(out)} == {"threshold"}
    # --threshold alone makes it the threshold rule at T
    rows, err = _predict(capsys, path, cells, "--threshold", str(t))
    assert [c for _, _, c in rows] == ["ALL" if p >= t else "normal" for p in scores]
    assert "decided by rule threshold (--threshold)" in err


def test_predict_rule_flag_overrides_the_stored_rule_keeping_its_parameters(tmp_path, capsys,
                                                                             cells, scores):
    # stored: the threshold rule at 0 (every cell ALL), with prior 0.2 and min_batch 10 kept
    path = _export(tmp_path / "m.keras", threshold=0.0,
                   rule=Rule("threshold", threshold=0.0, prior=0.2, min_batch=10))
    rows, _ = _predict(capsys, path, cells)
    assert [c for _, _, c in rows] == ["ALL"] * len(cells)
    out = tmp_path / "p.csv"
    rows, err = _predict(capsys, path, cells, "--rule", "prior", "--csv", str(out))
    assert [c for _, _, c in rows] == _top(scores, 2)
    assert [r["class"] for r in _read_csv(out)] == _top(scores, 2)
    assert {r["rule"] for r in _read_csv(out)} == {"prior"}
    assert "decided by rule prior (--rule): prior matching over 10 cells: 20% called ALL" in err


def test_predict_unknown_rule_is_a_usage_error(tmp_path, capsys, cells):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(_export(tmp_path / "m.keras")), str(cells[0]), "--rule", "vote"])
    assert e.value.code == 2
    assert "invalid choice: 'vote'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the neighbour correction (transductive)


def test_neighbour_correction_blends_each_cell_with_its_neighbours_hand_computed():
    # two clusters of three cells (directions x and y); K = 2: each cell's neighbours are the
    # other two of its cluster
    f = np.array([[1, .1, 0], [1, 0, .1], [1, .05, .05], [0, 1, .1], [.1, 1, 0], [.05, 1, .05]])
    p = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(neighbour_correction(p, f, 2, rounds=1),
                               [0.5, 0.25, 0.25, 0.75, 0.75, 0.5])
    # three rounds (the default), worked by hand; each cluster keeps its mean
    np.testing.assert_allclose(neighbour_correction(p, f, 2),
                               [0.34375, 0.328125, 0.328125, 0.671875, 0.671875, 0.65625])
    assert p.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]  # the input is left as it is


def test_neighbour_correction_uses_cosine_distance_on_normalised_features():
    # by Euclidean distance cell 0's nearest is cell 2 (1.4 away); by angle it is cell 1
    f = np.array([[1.0, 0.0], [100.0, 1.0], [0.0, 1.0]])
    p = np.array([0.0, 1.0, 0.5])
    assert neighbour_correction(p, f, 1, rounds=1)[0] == pytest.approx(0.5)
    # scaling a cell's features changes no neighbour
    np.testing.assert_allclose(neighbour_correction(p, f * [[3.0], [0.01], [7.0]], 1),
                               neighbour_correction(p, f, 1))


def test_neighbour_correction_never_counts_a_cell_as_its_own_neighbour():
    f = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # two pairs of duplicates
    p = np.array([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(neighbour_correction(p, f, 1, rounds=1), [0.5] * 4)


def test_neighbour_correction_needs_k_plus_one_cells():
    f = np.eye(3)
    with pytest.raises(ValueError, match=r"needs at least K \+ 1 = 4 cells, and 3 were given"):
        neighbour_correction(np.zeros(3), f, 3)


def test_neighbour_correction_rejects_k_below_one():
    with pytest.raises(ValueError, match="K must be >= 1"):
        neighbour_correction(np.zeros(3), np.eye(3), 0)


def test_neighbour_correction_rejects_features_not_one_row_per_cell():
    with pytest.raises(ValueError, match=r"features of shape \(2, 3\) for 3 cells"):
        neighbour_correction(np.zeros(3), np.eye(3)[:2], 1)


def _pool(member, pixels: np.ndarray) -> np.ndarray:
    """The mean over positions of the feature map a member's ``pool`` layer averages."""
    import keras

    maps = keras.Model(member.inputs, member.get_layer("pool").input).predict(
        pixels.astype("float32"), verbose=0)
    return maps.mean(axis=(1, 2))


def test_model_features_of_an_ensemble_concatenate_each_members_pool(tmp_path, cells):
    members = [_member(0), _member(1)]
    pixels = np.stack([decode_image(str(f), SIZE, "cell")[0] for f in cells[:4]])
    expected = np.concatenate([_pool(m, pixels) for m in members], axis=1)
    path = tmp_path / "ensemble.keras"
    save_model(export_model(members, crop="cell", window=None, tta=True), path)
    got = model_features(load_model(str(path)), pixels)
    assert got.shape == (4, expected.shape[1]) == (4, 2 * members[0].get_layer("pool")
                                                   .output.shape[-1])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # the un-augmented view
    np.testing.assert_allclose(model_features(members[1], pixels), _pool(members[1], pixels),
                               rtol=1e-4, atol=1e-5)  # a plain model's own pool layer


def test_model_features_of_a_model_without_pool_is_an_error():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="has no 'pool' layer"):
        model_features(model, np.zeros((1, SIZE, SIZE, 3), np.uint8))


def test_predict_neighbours_adds_a_column_and_decides_on_it(tmp_path, capsys, cells, scores):
    model = load_model(str(_export(tmp_path / "plain.keras")))
    pixels = np.stack([decode_image(str(f), SIZE, "cell")[0] for f in cells])
    corrected = neighbour_correction(scores, model_features(model, pixels), 3)
    t = _between(corrected, unlike=scores)  # a cut where the corrected scores decide otherwise
    out = tmp_path / "p.csv"
    rows, err = _predict(capsys, _export(tmp_path / "m.keras", threshold=t), cells,
                         "--neighbours", "3", "--csv", str(out))
    written = _read_csv(out)
    assert out.read_text().splitlines()[0] == "path,p_all,class,rule,p_all_neighbours"
    assert [float(r["p_all"]) for r in written] == pytest.approx(scores, abs=1e-6)
    assert [float(r["p_all_neighbours"]) for r in written] == pytest.approx(corrected, abs=1e-5)
    assert [r["class"] for r in written] == ["ALL" if p >= t else "normal" for p in corrected]
    assert [c for _, _, c in rows] == [r["class"] for r in written]
    assert [p for _, p, _ in rows] == pytest.approx(scores, abs=1e-4)
    assert "neighbour-corrected (transductive, K=3); class = ALL where corrected P(ALL)" in err


def test_predict_neighbours_more_than_the_cells_exits_2_naming_the_numbers(tmp_path, capsys,
                                                                            cells):
    capsys.readouterr()
    assert main(["predict", str(_export(tmp_path / "m.keras")), *map(str, cells[:4]),
                 "--neighbours", "4"]) == 2
    err = capsys.readouterr().err
    assert ("error: --neighbours 4: the neighbour correction needs at least K + 1 = 5 cells, "
            "and 4 were given") in err


# ---------------------------------------------------------------------------------------------
# --csv and the per-patient summary


def test_predict_csv_writes_path_p_all_class_rule_rows(tmp_path, capsys, cells, scores):
    t = _between(scores)
    out = tmp_path / "sub" / "predictions.csv"
    rows, err = _predict(capsys, _export(tmp_path / "m.keras", threshold=t), cells,
                         "--csv", str(out))
    assert out.read_text().splitlines()[0] == "path,p_all,class,rule"
    assert {r["rule"] for r in _read_csv(out)} == {"threshold"}
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


def _patient_lines(err: str) -> dict[str, list[str]]:
    """The rows of the per-patient call printed on stderr, by patient."""
    return {line.split("\t")[0]: line.split("\t")[1:] for line in err.splitlines()
            if line.count("\t") == 4 and not line.startswith("patient\t")}


def test_predict_calls_each_patient_named_in_the_files(tmp_path, capsys, cells, scores):
    t = _between(scores)
    _, err = _predict(capsys, _export(tmp_path / "m.keras", threshold=t), cells)
    assert (f"per-patient call (ALL where >= 50% of the patient's cells are called ALL; cells: "
            f"threshold {t:.3f})") in err
    assert "patient\tcells\tmean P(ALL)\tshare called ALL\tpatient call" in err
    lines = _patient_lines(err)
    assert sorted(lines) == ["11", "H11"]
    for patient, sl in (("11", slice(0, 6)), ("H11", slice(6, 10))):
        p = scores[sl]
        share = (p >= t).mean()
        assert lines[patient] == [str(len(p)), f"{p.mean():.4f}", f"{share:.3f}",
                                  "ALL" if share >= 0.5 else "normal"]


def test_predict_patient_call_is_all_from_half_of_its_cells(tmp_path, capsys, cells, scores):
    assert PATIENT_CALL_SHARE == 0.5
    h11 = np.sort(scores[6:10])  # 4 cells of patient H11
    path = _export(tmp_path / "m.keras")
    for t, share, call in (((h11[1] + h11[2]) / 2, "0.500", "ALL"),
                           ((h11[2] + h11[3]) / 2, "0.250", "normal")):
        out = tmp_path / "patients.csv"
        _, err = _predict(capsys, path, cells, "--threshold", str(t), "--patients-csv", str(out))
        assert _patient_lines(err)["H11"][2:] == [share, call]
        written = {r["patient_id"]: r for r in _read_csv(out)}
        assert out.read_text().splitlines()[0] == "patient_id,cells,mean_p_all,share_all,call"
        assert written["H11"]["cells"] == "4" and written["H11"]["call"] == call
        assert float(written["H11"]["share_all"]) == float(share)
        assert float(written["H11"]["mean_p_all"]) == pytest.approx(h11.mean(), abs=1e-6)
        assert f"wrote {out}" in err


def test_predict_patient_per_folder_names_patients_by_folder(tmp_path, capsys, cells, scores):
    t = _between(scores)
    copies = []
    for patient, sl in (("patient-a", slice(0, 6)), ("patient-b", slice(6, 10))):
        (tmp_path / patient).mkdir()
        for i, src in enumerate(cells[sl]):
            copies.append(tmp_path / patient / f"cell{i}.bmp")
            copies[-1].write_bytes(src.read_bytes())
    path = _export(tmp_path / "m.keras", threshold=t)
    out = tmp_path / "patients.csv"
    _, err = _predict(capsys, path, [tmp_path / "patient-a", tmp_path / "patient-b"],
                      "--patient-per-folder", "--patients-csv", str(out))
    written = {r["patient_id"]: r for r in _read_csv(out)}
    assert sorted(written) == sorted(_patient_lines(err)) == ["patient-a", "patient-b"]
    for patient, sl in (("patient-a", slice(0, 6)), ("patient-b", slice(6, 10))):
        share = (scores[sl] >= t).mean()
        assert float(written[patient]["share_all"]) == pytest.approx(share)
        assert written[patient]["call"] == ("ALL" if share >= 0.5 else "normal")
    # without the flag these names carry no patient: no summary, and --patients-csv is an error
    _, err = _predict(capsys, path, [tmp_path / "patient-a"])
    assert "per-patient" not in err
    capsys.readouterr()
    assert main(["predict", str(path), str(tmp_path / "patient-a"),
                 "--patients-csv", str(tmp_path / "none.csv")]) == 2
    assert "no input names a patient" in capsys.readouterr().err
    assert not (tmp_path / "none.csv").exists()


def test_predict_without_patient_names_prints_no_summary(tmp_path, capsys, unnamed_cells):
    rows, err = _predict(capsys, _export(tmp_path / "m.keras"), unnamed_cells)
    assert len(rows) == len(unnamed_cells)
    assert "per-patient" not in err


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
    assert metrics["transductive"]["per_patient"]["patients"] == len(set(val.patient_ids))
    assert metrics["transductive"]["neighbours"]["n"] == len(val)
    assert json.loads((tmp_path / "metrics-validation.json").read_text()) == metrics


def test_cli_evaluate_threshold_flag_overrides_the_stored_one(tmp_path, real_store, capsys):
    crop, window = Store(real_store).crop
    path = _export(tmp_path / "m.keras", crop=crop, window=window, threshold=0.0)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(path), "--store", real_store, "--out", str(out),
                 "--threshold", "0.25"]) == 0
    written = json.loads(out.read_text())
    assert written["threshold"] == 0.25 and written["at_0.5"]["threshold"] == 0.5


def test_evaluate_model_decides_with_the_stored_rule_over_the_selection(tmp_path, real_store):
    store = Store(real_store)
    val = store.load("validation")
    crop, window = store.crop
    path = _export(tmp_path / "m.keras", crop=crop, window=window, threshold=0.0,
                   rule=Rule("prior", prior=0.3, threshold=0.0, min_batch=len(val.labels)))
    p = predict_proba(load_model(str(path)), val.images)
    cut = prior_cut(p, 0.3)
    metrics = evaluate_model(path, real_store)
    expected = M.binary_metrics(val.labels, p, val.patient_ids, threshold=cut)
    assert metrics["threshold"] == pytest.approx(cut)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    called_all = np.asarray(metrics["confusion_matrix"])[:, 1].sum()
    assert called_all == round(0.3 * len(p)) and called_all < len(p)  # not the 0.0 fallback
    assert metrics["rule"] == Rule("prior", prior=0.3, threshold=0.0,
                                   min_batch=len(val.labels)).to_dict()
    assert metrics["decided_by"].startswith(f"prior matching over {len(p)} cells")
    assert metrics["at_0.5"]["threshold"] == 0.5


def test_cli_evaluate_rule_flag_and_the_fallback_on_a_small_selection(tmp_path, real_store):
    crop, window = Store(real_store).crop
    path = _export(tmp_path / "m.keras", crop=crop, window=window, threshold=0.0,
                   rule=Rule("threshold", threshold=0.0, prior=0.3, min_batch=10_000))
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(path), "--store", real_store, "--out", str(out),
                 "--rule", "em"]) == 0
    written = json.loads(out.read_text())
    assert written["rule"]["name"] == "em" and written["rule"]["min_batch"] == 10_000
    assert written["threshold"] == 0.0
    assert written["decided_by"].startswith("em needs >= 10000 cells, the batch has ")


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
