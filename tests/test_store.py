"""Tests for leukemia.store and the ingest/describe CLI: the real sample, bad files, atomicity,
crop modes, image formats and duplicates judged by decoded pixels.

The real sample is ingested once per session (``real_store`` in conftest.py); everything else is
built from small generated trees (``make_tree``, ``make_tcia_tree``) or a handful of real images
copied into tmp_path (the real duplicate pair needs the dev set, ``dev_data``).

    .venv/bin/python -m pytest -q tests/test_store.py
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from leukemia import cli
from leukemia.dataset import DatasetError
from leukemia.imaging import check_crop, crop_to_cell, crop_window, decode_image, preprocess_frame
from leukemia.store import DATA_FILE, MANIFEST, Store, StoreError, describe, ingest

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"training": "training", "validation(prelim_test)": "validation"}
# Per SOURCES.md of the real sample: (all, hem) per fold and in the prelim-test split.
REAL_FOLDS = {"0": (40, 40), "1": (39, 38), "2": (20, 23)}
REAL_VALIDATION = (20, 20)


def read_manifest(real_data: Path) -> dict[str, dict[str, str]]:
    """MANIFEST.csv rows keyed by image_id (``file`` without ``C-NMC_Leukemia/`` and ``.bmp``)."""
    with open(real_data / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for row in rows:
        prefix, rel = row["file"].split("/", 1)
        assert prefix == "C-NMC_Leukemia" and rel.endswith(".bmp"), row["file"]
        out[rel[: -len(".bmp")]] = row
    return out


def store_rows(store: str) -> list[dict]:
    """Every row of a local store without the pixel column."""
    table = pq.read_table(Path(store) / DATA_FILE)
    return table.drop_columns(["image"]).to_pylist()


def leftovers(store: Path) -> list[str]:
    """Temporary or backup folders an ingest left beside ``store``."""
    prefixes = (f"{store.name}.tmp-", f"{store.name}.old-")
    return sorted(p.name for p in store.parent.iterdir() if p.name.startswith(prefixes))


def copy_real_cells(real_data: Path, dest: Path, per_class: int = 2) -> Path:
    """A one-fold tree of ``per_class`` real fold_0 cells per class under ``dest``; its root."""
    root = dest / "C-NMC_Leukemia"
    for cls in ("all", "hem"):
        src = real_data / "C-NMC_Leukemia/training_data/fold_0" / cls
        out = root / "training_data/fold_0" / cls
        out.mkdir(parents=True)
        for p in sorted(src.glob("*.bmp"))[:per_class]:
            shutil.copyfile(p, out / p.name)
    return root


# ---------------------------------------------------------------------------------------------
# The real sample


def test_ingest_real_sample_rows_match_manifest(real_store, real_data):
    manifest = read_manifest(real_data)
    rows = store_rows(real_store)

    assert len(rows) == len(manifest) == 240
    assert {r["image_id"] for r in rows} == set(manifest)
    for r in rows:
        m = manifest[r["image_id"]]
        assert r["label"] == int(m["label"]), r["image_id"]
        assert r["patient_id"] == m["patient_id"], r["image_id"]
        assert r["split"] == SPLITS[m["split"]], r["image_id"]
        assert r["fold"] == (int(m["fold"].removeprefix("fold_")) if m["fold"] else None)
        assert r["original_name"] == m["original_name"], r["image_id"]
        assert r["source_sha256"] == m["sha256"], r["image_id"]
        assert (r["height"], r["width"]) == (64, 64)
        assert (r["source_height"], r["source_width"]) == (450, 450)


def test_store_load_real_sample_matches_manifest(real_store, real_data):
    manifest = read_manifest(real_data)
    store = Store(real_store)
    seen = set()
    for split in ("training", "validation"):
        sel = store.load(split)
        for image_id, label, patient, fold in zip(sel.image_ids, sel.labels, sel.patient_ids,
                                                  sel.folds, strict=True):
            m = manifest[str(image_id)]
            assert SPLITS[m["split"]] == split
            assert int(label) == int(m["label"])
            assert str(patient) == m["patient_id"]
            assert int(fold) == (int(m["fold"].removeprefix("fold_")) if m["fold"] else -1)
            seen.add(str(image_id))
    assert seen == set(manifest)


def check_real_counts(manifest: dict, size: int) -> None:
    assert manifest["n_images"] == 240
    assert manifest["image_size"] == size
    assert (manifest["crop"], manifest["window"]) == ("window", 320)  # the default crop
    assert manifest["splits"]["training"] == {"n": 200, "all": 99, "hem": 101}
    assert manifest["splits"]["validation"] == {"n": 40, "all": 20, "hem": 20}
    assert {f: c["n"] for f, c in manifest["folds"].items()} == {"0": 80, "1": 77, "2": 43}
    assert {f: (c["all"], c["hem"]) for f, c in manifest["folds"].items()} == REAL_FOLDS
    assert len(manifest["patients"]["training"]) == 54
    assert len(manifest["patients"]["validation"]) == 22
    assert set(manifest["patients"]["training"]).isdisjoint(manifest["patients"]["validation"])
    assert manifest["missing_validation"] == 1827
    assert manifest["skipped_bad_files"] == []
    assert manifest["duplicates"] == manifest["duplicate_warnings"] == []


def test_describe_real_sample_counts(real_store, real_data, tmp_path, capsys):
    check_real_counts(Store(real_store).manifest, 64)

    # The same counts through the CLI, at the default training size.
    store = str(tmp_path / "store224")
    assert cli.main(["ingest", str(real_data), "--store", store, "--size", "224", "-q"]) == 0
    assert "ingested in" in capsys.readouterr().out
    assert cli.main(["describe", store, "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    check_real_counts(manifest, 224)
    assert manifest == Store(store).manifest
    assert manifest["source"] == str(real_data / "C-NMC_Leukemia")
    assert manifest["content_checksum"] != Store(real_store).checksum  # size is part of it


def test_describe_text_lists_splits_and_folds(real_store, capsys):
    assert cli.main(["describe", real_store]) == 0
    text = capsys.readouterr().out

    assert text == describe(Store(real_store).manifest) + "\n"
    assert "image store: 240 images, 64 px, crop=window 320 px, schema v1" in text
    assert re.search(r"training\s+200\s+\(all 99, hem 101; 54 patients\)", text)
    assert re.search(r"fold 2\s+43\s+\(all 20, hem 23\)", text)
    assert re.search(r"validation\s+40\s+\(all 20, hem 20; 22 patients\)", text)
    assert "without an image on disk: 1827" in text


# ---------------------------------------------------------------------------------------------
# Pixels


def test_store_pixels_equal_decode_image(real_store, real_data):
    store = Store(real_store)
    cnmc = real_data / "C-NMC_Leukemia"
    train, val = store.load("training"), store.load("validation")
    # 127/128 straddle the Parquet row-group boundary (128 rows per group).
    for sel, picks in ((train, (0, 57, 127, 128, 199)), (val, (0, 39))):
        for i in picks:
            expected, h, w = decode_image(str(cnmc / f"{sel.image_ids[i]}.bmp"), 64,
                                          crop="window", window=320)
            np.testing.assert_array_equal(sel.images[i], expected, err_msg=sel.image_ids[i])
            assert (h, w) == (450, 450)


def test_store_load_returns_contiguous_uint8_batch(real_store):
    sel = Store(real_store).load("training")

    assert sel.images.shape == (200, 64, 64, 3)
    assert sel.images.dtype == np.uint8
    assert sel.images.flags.c_contiguous
    assert sel.labels.dtype == np.int8 and set(sel.labels.tolist()) == {0, 1}
    assert sel.folds.dtype == np.int8 and set(sel.folds.tolist()) == {0, 1, 2}
    assert len(sel) == len(sel.patient_ids) == len(sel.image_ids) == 200
    assert sel.images.max() > 100  # pixels, not an all-black buffer


def cell_span(img: np.ndarray) -> float:
    """The longer side of the bounding box of non-black pixels, as a fraction of the image."""
    mask = img.max(axis=2) > 10
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / img.shape[0]


def test_ingest_without_crop_stores_resized_whole_frame(real_data, tmp_path):
    root = copy_real_cells(real_data, tmp_path / "data", per_class=3)
    ingest(root, str(tmp_path / "full"), size=64, crop="none", workers=1, progress=False)
    ingest(root, str(tmp_path / "crop"), size=64, crop="cell", workers=1, progress=False)
    full, cropped = Store(tmp_path / "full").load(), Store(tmp_path / "crop").load()

    assert Store(tmp_path / "full").manifest["crop"] == "none"
    assert Store(tmp_path / "crop").manifest["crop"] == "cell"
    assert list(full.image_ids) == list(cropped.image_ids)
    for i, image_id in enumerate(full.image_ids):
        bgr = cv2.imread(str(root / f"{image_id}.bmp"), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        expected = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(full.images[i], expected, err_msg=image_id)
        # The cell fills the cropped square (side = its longer extent + 5% each end) but only
        # 30-80% of the whole frame's side, so cropping removes most of the black background.
        assert cell_span(cropped.images[i]) > 0.85 > cell_span(full.images[i]), image_id
    black_full = (full.images.max(axis=3) <= 10).sum()
    black_crop = (cropped.images.max(axis=3) <= 10).sum()
    assert black_crop < 0.7 * black_full, (black_crop, black_full)


def test_crop_to_cell_centres_square_on_cell():
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:40, 30:70] = 200  # a 20 x 40 "cell"

    out = crop_to_cell(img, margin=0.05)

    assert out.shape == (44, 44, 3)  # 40 px plus 5% on each end
    assert (out.max(axis=2) > 0).sum() == 20 * 40  # the whole cell, nothing else
    np.testing.assert_array_equal(crop_to_cell(np.zeros((9, 9, 3), np.uint8)),
                                  np.zeros((9, 9, 3), np.uint8))


def test_decode_image_rejects_non_image(tmp_path):
    path = tmp_path / "notes.bmp"
    path.write_text("not an image")

    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(str(path), 32)


# ---------------------------------------------------------------------------------------------
# Store.load selections


def test_store_load_validation_has_no_folds(real_store):
    sel = Store(real_store).load("validation")

    assert len(sel) == 40
    assert (sel.folds == -1).all()


def test_store_load_selects_folds(real_store):
    store = Store(real_store)

    sel = store.load("training", folds=[0, 2])
    assert len(sel) == 123
    assert set(sel.folds.tolist()) == {0, 2}
    assert len(store.load("training", folds=[1])) == 77
    assert len(store.load("training")) == 200


def test_store_load_rejects_empty_selection(real_store):
    with pytest.raises(StoreError, match="no images with split='validation' folds=\\[0\\]"):
        Store(real_store).load("validation", folds=[0])


def test_store_load_rejects_unknown_split(real_store):
    with pytest.raises(ValueError, match="split='test'"):
        Store(real_store).load("test")


def test_selection_subset_keeps_rows_aligned(real_store):
    sel = Store(real_store).load("training")
    mask = sel.labels == 1

    sub = sel.subset(mask)

    assert len(sub) == 99 and (sub.labels == 1).all()
    np.testing.assert_array_equal(sub.images, sel.images[mask])
    np.testing.assert_array_equal(sub.image_ids, sel.image_ids[mask])


# ---------------------------------------------------------------------------------------------
# Opening stores


def test_store_rejects_missing_path(tmp_path):
    with pytest.raises(StoreError, match="nothing is there"):
        Store(tmp_path / "none")


def test_store_rejects_folder_without_manifest(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / DATA_FILE).write_bytes(b"")

    with pytest.raises(StoreError, match="an ingest did not finish"):
        Store(tmp_path / "half")


def test_store_rejects_manifest_that_is_not_json(make_tree, tmp_path):
    store = tmp_path / "store"
    ingest(make_tree(), str(store), size=16, workers=1, progress=False)
    (store / MANIFEST).write_text("{ not json")

    with pytest.raises(StoreError, match="manifest.json: not valid JSON"):
        Store(store)


def test_store_rejects_other_schema_version(make_tree, tmp_path):
    store = tmp_path / "store"
    manifest = ingest(make_tree(), str(store), size=16, workers=1, progress=False)
    (store / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 99}))

    with pytest.raises(StoreError, match="schema version 99"):
        Store(store)


def test_store_reads_file_uri(make_tree, tmp_path):
    uri = (tmp_path / "uri-store").as_uri()
    assert uri.startswith("file:///")

    manifest = ingest(make_tree(), uri, size=16, workers=1, progress=False)
    store = Store(uri)

    assert store.checksum == manifest["content_checksum"] == Store(tmp_path / "uri-store").checksum
    sel = store.load("training")
    assert sel.images.shape == (8, 16, 16, 3)
    assert len(store.load("validation")) == 2


# ---------------------------------------------------------------------------------------------
# Ingest: small trees


def test_ingest_tiny_tree(make_tree, tmp_path):
    store = tmp_path / "store"

    manifest = ingest(make_tree(validation=2, missing_rows=1), str(store), size=16, workers=1,
                      progress=False)

    assert manifest["n_images"] == 10
    assert manifest["splits"] == {"training": {"n": 8, "all": 4, "hem": 4},
                                  "validation": {"n": 2, "all": 1, "hem": 1}}
    assert manifest["missing_validation"] == 1
    assert Store(store).manifest == manifest
    assert leftovers(store) == []


def test_ingest_checksum_does_not_depend_on_workers(make_tree, tmp_path):
    root = make_tree()
    one = ingest(root, str(tmp_path / "w1"), size=16, workers=1, progress=False)
    two = ingest(root, str(tmp_path / "w2"), size=16, workers=2, progress=False)
    other = ingest(root, str(tmp_path / "s24"), size=24, workers=1, progress=False)

    assert one["content_checksum"] == two["content_checksum"] != other["content_checksum"]
    a, b = Store(tmp_path / "w1").load(), Store(tmp_path / "w2").load()
    np.testing.assert_array_equal(a.images, b.images)
    assert list(a.image_ids) == list(b.image_ids)


def test_ingest_rejects_size_out_of_range(make_tree, tmp_path):
    with pytest.raises(ValueError, match="size=4"):
        ingest(make_tree(), str(tmp_path / "store"), size=4, progress=False)


def test_ingest_refuses_existing_store_without_overwrite(make_tree, tmp_path):
    store = tmp_path / "store"
    ingest(make_tree(), str(store), size=16, workers=1, progress=False)

    with pytest.raises(StoreError, match="exists; remove it"):
        ingest(make_tree("other"), str(store), size=16, overwrite=False, progress=False)


def test_ingest_rejects_folder_without_cnmc_layout(tmp_path, write_bmp):
    write_bmp(tmp_path / "photos" / "a.bmp", seed=1)

    with pytest.raises(DatasetError, match="photos is not the C-NMC layout"):
        ingest(tmp_path / "photos", str(tmp_path / "store"), progress=False)
    assert not (tmp_path / "store").exists()


def test_ingest_lists_every_unreadable_file(make_tree, tmp_path):
    root = make_tree()
    truncated = root / "training_data/fold_0/all/UID_10_1_1_all.bmp"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text = root / "training_data/fold_1/hem/UID_H11_5_1_hem.bmp"
    text.write_text("this is not a bitmap")
    empty = root / "validation_data/C-NMC_test_prelim_phase_data/2.bmp"
    empty.write_bytes(b"")

    with pytest.raises(DatasetError, match="3 image file\\(s\\) cannot be read") as err:
        ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)
    for bad in (truncated, text, empty):
        assert f"{bad.resolve()}: not a readable image" in str(err.value)
    assert not (tmp_path / "store").exists()
    assert leftovers(tmp_path / "store") == []


def test_ingest_skip_bad_leaves_bad_files_out(make_tree, tmp_path):
    root = make_tree()
    truncated = root / "training_data/fold_0/hem/UID_H10_0_1_hem.bmp"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text = root / "validation_data/C-NMC_test_prelim_phase_data/1.bmp"
    text.write_text("this is not a bitmap")

    manifest = ingest(root, str(tmp_path / "store"), size=16, workers=1, skip_bad=True,
                      progress=False)

    assert manifest["n_images"] == 8
    assert [s.split(":")[0] for s in manifest["skipped_bad_files"]] == [
        str(truncated.resolve()), str(text.resolve())]
    store = Store(tmp_path / "store")
    ids = set(store.load("training").image_ids) | set(store.load("validation").image_ids)
    assert len(ids) == 8
    assert "training_data/fold_0/hem/UID_H10_0_1_hem" not in ids
    assert "validation_data/C-NMC_test_prelim_phase_data/1" not in ids
    assert manifest["splits"]["validation"] == {"n": 1, "hem": 1}


def test_ingest_warns_about_identical_image_in_two_splits(make_tree, tmp_path, caplog):
    root = make_tree()
    src = root / "training_data/fold_0/all/UID_10_0_1_all.bmp"
    shutil.copyfile(src, root / "validation_data/C-NMC_test_prelim_phase_data/1.bmp")

    with caplog.at_level(logging.WARNING, logger="leukemia.store"):
        manifest = ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert manifest["duplicate_warnings"] == [
        "identical image (same decoded pixels) in two splits and patients: "
        "training_data/fold_0/all/UID_10_0_1_all (UID_10_0_1_all.bmp), "
        "validation_data/C-NMC_test_prelim_phase_data/1 (UID_50_1_1_all.bmp)"]
    assert manifest["duplicates"] == [["training_data/fold_0/all/UID_10_0_1_all",
                                       "validation_data/C-NMC_test_prelim_phase_data/1"]]
    assert manifest["n_images"] == 10  # a warning, not a failure
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert manifest["duplicate_warnings"][0] in warned


def test_ingest_warns_about_identical_image_under_two_patients(make_tree, tmp_path, caplog):
    root = make_tree()
    src = root / "training_data/fold_0/all/UID_10_0_1_all.bmp"
    shutil.copyfile(src, root / "training_data/fold_0/all/UID_12_0_1_all.bmp")

    with caplog.at_level(logging.WARNING, logger="leukemia.store"):
        manifest = ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert manifest["duplicate_warnings"] == [
        "identical image (same decoded pixels) in two patients: "
        "training_data/fold_0/all/UID_10_0_1_all (UID_10_0_1_all.bmp), "
        "training_data/fold_0/all/UID_12_0_1_all (UID_12_0_1_all.bmp)"]
    assert manifest["duplicates"] == [["training_data/fold_0/all/UID_10_0_1_all",
                                       "training_data/fold_0/all/UID_12_0_1_all"]]
    assert any("two patients" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_ingest_notes_ignored_testing_data(make_tree, tmp_path, write_bmp):
    root = make_tree()
    write_bmp(root / "testing_data/C-NMC_test_final_phase_data/1.bmp", seed=99)

    manifest = ingest(root.parent, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert manifest["n_images"] == 10
    assert "testing_data/ has no public labels and is ignored" in manifest["notes"]


# ---------------------------------------------------------------------------------------------
# Atomicity


def test_ingest_failure_keeps_existing_store(make_tree, tmp_path):
    root = make_tree()
    store = tmp_path / "store"
    before = ingest(root, str(store), size=16, workers=1, progress=False)
    (root / "training_data/fold_0/all/UID_10_1_1_all.bmp").write_text("broken")

    with pytest.raises(DatasetError, match="UID_10_1_1_all.bmp: not a readable image"):
        ingest(root, str(store), size=16, workers=1, progress=False)

    assert Store(store).checksum == before["content_checksum"]
    assert len(Store(store).load("training")) == 8
    assert leftovers(store) == []


def test_ingest_replaces_existing_store(make_tree, tmp_path):
    store = tmp_path / "store"
    ingest(make_tree("a", per_class=1), str(store), size=16, workers=1, progress=False)

    after = ingest(make_tree("b", per_class=3), str(store), size=16, workers=1, progress=False)

    assert Store(store).checksum == after["content_checksum"]
    assert len(Store(store).load("training")) == 12
    assert leftovers(store) == []


def start_cli_ingest(data: Path, store: Path, log_path: Path, size: int = 64) -> subprocess.Popen:
    with open(log_path, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "leukemia.cli", "ingest", str(data), "--store", str(store),
             "--size", str(size), "--workers", "1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)


def kill_once_progress_shows(proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    """SIGKILL ``proc`` as soon as its progress line appears (it is then decoding images)."""
    deadline = time.monotonic() + timeout
    while "ingest: " not in log_path.read_text():
        if proc.poll() is not None:
            pytest.fail(f"ingest ended (rc {proc.returncode}) before it could be killed; "
                        f"stderr: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ingest showed no progress within {timeout} s")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture
def big_tree(make_tree) -> Path:
    """400 cells of 450 x 450 px: a couple of seconds of single-process ingest."""
    return make_tree("big", folds=(0, 1), per_class=100, validation=0, side=450)


def test_ingest_killed_midway_leaves_no_store(big_tree, tmp_path):
    store = tmp_path / "store"
    log_path = tmp_path / "ingest.log"

    kill_once_progress_shows(start_cli_ingest(big_tree, store, log_path), log_path)

    assert not store.exists()
    with pytest.raises(StoreError, match="is not an image store"):
        Store(store)


def test_ingest_killed_midway_keeps_existing_store(big_tree, make_tree, tmp_path):
    store = tmp_path / "store"
    before = ingest(make_tree("small"), str(store), size=64, workers=1, progress=False)
    log_path = tmp_path / "ingest.log"

    kill_once_progress_shows(start_cli_ingest(big_tree, store, log_path), log_path)

    assert Store(store).checksum == before["content_checksum"]
    assert Store(store).manifest == before
    assert len(Store(store).load("training")) == 8


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_ingest_bad_folder_exits_2(tmp_path, capsys, write_bmp):
    write_bmp(tmp_path / "photos" / "a.bmp", seed=1)

    rc = cli.main(["ingest", str(tmp_path / "photos"), "--store", str(tmp_path / "s"), "-q"])

    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'photos'} is not the C-NMC layout")
    assert not (tmp_path / "s").exists()


def test_cli_ingest_unreadable_file_exits_2(make_tree, tmp_path, capsys):
    root = make_tree()
    bad = root / "training_data/fold_1/all/UID_11_0_1_all.bmp"
    bad.write_text("broken")

    rc = cli.main(["ingest", str(root), "--store", str(tmp_path / "s"), "--workers", "1", "-q"])

    assert rc == 2
    assert f"{bad.resolve()}: not a readable image" in capsys.readouterr().err


def test_cli_describe_missing_store_exits_2(tmp_path, capsys):
    assert cli.main(["describe", str(tmp_path / "none")]) == 2
    assert "is not an image store" in capsys.readouterr().err


def test_cli_module_runs_as_script(make_tree, tmp_path):
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-m", "leukemia.cli", "ingest", str(make_tree()), "--store", str(store),
         "--size", "16", "--workers", "1", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "image store: 10 images, 16 px" in done.stdout
    assert Store(store).manifest["n_images"] == 10


def test_ingest_refuses_to_replace_folder_that_is_not_a_store(make_tree, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.txt").write_text("months of work")

    with pytest.raises((StoreError, FileExistsError)):
        ingest(make_tree(), str(precious), size=16, workers=1, progress=False)
    assert (precious / "chapter1.txt").read_text() == "months of work"


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["no-store", "old-store"])
def test_ingest_killed_while_writing_leaves_no_partial_store(make_tree, tmp_path, existing):
    # 450 px cells stored at 450 px: ~0.5 s of Parquet writing, a window wide enough to hit.
    data = make_tree("big", folds=(0, 1), per_class=40, validation=0, side=450)
    store = tmp_path / "store"
    before = (ingest(make_tree("small"), str(store), size=16, workers=1, progress=False)
              if existing else None)
    log_path = tmp_path / "ingest.log"
    proc = start_cli_ingest(data, store, log_path, size=450)

    deadline = time.monotonic() + 120
    while not (tmp := leftovers(store)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ingest ended (rc {proc.returncode}) before its temporary store "
                        f"appeared; stderr: {log_path.read_text()[-2000:]}")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    if before is None:
        assert not store.exists()
        with pytest.raises(StoreError, match="nothing is there"):
            Store(store)
    else:
        assert Store(store).manifest == before
        assert len(Store(store).load("training")) == 8
    # The SIGKILLed ingest may leave its temporary folder behind, but never as a readable store.
    assert all(name.startswith("store.tmp-") for name in tmp)
    for name in leftovers(store):
        with pytest.raises(StoreError, match="an ingest did not finish"):
            Store(tmp_path / name)


# ---------------------------------------------------------------------------------------------
# Crop modes


def disc(radius: int, centre: tuple[int, int] = (100, 100), side: int = 200) -> np.ndarray:
    """A ``side`` px black RGB frame holding one disc centred at ``centre`` (row, column)."""
    img = np.zeros((side, side, 3), np.uint8)
    cv2.circle(img, (centre[1], centre[0]), radius, (200, 120, 80), -1)  # cv2 takes (x, y)
    return img


def cell_area(img: np.ndarray) -> int:
    """Pixels brighter than the background threshold."""
    return int((img.max(axis=2) > 10).sum())


def test_crop_window_keeps_cell_size_where_cell_crop_erases_it():
    small, large = disc(20), disc(40)

    window = [preprocess_frame(d, 64, crop="window", window=160) for d in (small, large)]
    cell = [preprocess_frame(d, 64, crop="cell") for d in (small, large)]

    assert 3.6 < cell_area(window[1]) / cell_area(window[0]) < 4.4  # twice the radius
    assert 0.9 < cell_area(cell[1]) / cell_area(cell[0]) < 1.1  # every cell fills the frame
    out = crop_window(small, 160)
    assert out.shape == (160, 160, 3) and cell_area(out) == cell_area(small)  # not resized


def test_crop_window_centres_on_cell_centroid():
    img = np.zeros((200, 300, 3), np.uint8)
    img[40:80, 200:240] = 150  # a block...
    img[40:44, 240:280] = 150  # ...with an arm: its centroid is ~16 px left of the box centre
    ys, xs = np.nonzero(img.max(axis=2))

    out = crop_window(img, 128)

    assert out.shape == (128, 128, 3)
    assert cell_area(out) == cell_area(img)  # the whole cell, at its size
    oy, ox = np.nonzero(out.max(axis=2))
    assert abs(oy.mean() - 64) <= 0.5 and abs(ox.mean() - 64) <= 0.5
    assert abs((xs.min() + xs.max()) / 2 - xs.mean()) > 10  # so the box centre would miss
    assert not out[:6].any()  # the window starts 6 px above the frame: black there


def test_crop_window_pads_window_larger_than_frame_with_black():
    img = disc(30)
    img[img.max(axis=2) == 0] = 5  # a dim background (below the threshold) to find the frame

    out = crop_window(img, 320)  # the frame is 200 px

    assert out.shape == (320, 320, 3)
    np.testing.assert_array_equal(out[60:260, 60:260], img)  # centred on the disc
    out[60:260, 60:260] = 0
    assert not out.any()  # black everywhere else


def test_decode_image_window_larger_than_small_image(tmp_path):
    img = np.zeros((24, 40, 3), np.uint8)  # smaller than the window, not square
    cv2.circle(img, (20, 12), 6, (40, 80, 160), -1)
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), img)

    pixels, h, w = decode_image(str(path), 64, crop="window", window=64)  # no resize

    assert pixels.shape == (64, 64, 3) and (h, w) == (24, 40)
    assert pixels[32, 32].tolist() == [160, 80, 40]  # RGB, the cell's centre in the middle
    # the whole frame, placed so that the cell's centre (row 12, column 20) is at (32, 32)
    np.testing.assert_array_equal(pixels[20:44, 12:52], cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    pixels[20:44, 12:52] = 0
    assert not pixels.any()  # black around it
    small, _, _ = decode_image(str(path), 32)  # the default 320 px window: still no error
    assert small.shape == (32, 32, 3) and small.any()


def test_crop_window_all_black_image_windows_its_centre():
    img = np.zeros((50, 70, 3), np.uint8)
    img[..., 0] = np.arange(70) % 10  # all below the threshold: no cell, but a pattern
    img[..., 1] = (np.arange(50) % 10)[:, None]

    np.testing.assert_array_equal(crop_window(img, 40), img[5:45, 15:55])
    assert crop_window(np.zeros((50, 70, 3), np.uint8), 100).shape == (100, 100, 3)


@pytest.mark.parametrize("crop", ["window", "cell", "none"])
def test_preprocess_frame_all_black_image_stays_black(crop):
    out = preprocess_frame(np.zeros((50, 70, 3), np.uint8), 32, crop=crop, window=40)

    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and not out.any()


def test_check_crop_normalises_modes():
    assert check_crop("window") == ("window", 320)
    assert check_crop("window", 200) == ("window", 200)
    assert check_crop("cell", 200) == ("cell", None)
    assert check_crop("none") == ("none", None)
    assert check_crop(True) == ("cell", None)  # old manifests and callers held a bool
    assert check_crop(False) == ("none", None)


def test_check_crop_rejects_unknown_mode():
    with pytest.raises(ValueError, match="crop='square': expected one of window, cell, none"):
        check_crop("square")


@pytest.mark.parametrize("window", [0, -5, 7, 4097])
def test_check_crop_rejects_bad_window(window):
    with pytest.raises(ValueError, match=f"window={window}: the crop window side must be 8 to"):
        check_crop("window", window)


def test_ingest_rejects_unknown_crop_before_writing(make_tree, tmp_path):
    with pytest.raises(ValueError, match="crop='square'"):
        ingest(make_tree(), str(tmp_path / "store"), size=16, crop="square", progress=False)
    assert not (tmp_path / "store").exists()


def test_ingest_manifest_records_crop_and_checksum_differs_per_mode(make_tree, tmp_path):
    root = make_tree()
    modes = {"none": ("none", None), "cell": ("cell", None), "window": ("window", None),
             "window48": ("window", 48)}
    manifests = {name: ingest(root, str(tmp_path / name), size=16, crop=crop, window=window,
                              workers=1, progress=False)
                 for name, (crop, window) in modes.items()}

    recorded = {name: (m["crop"], m["window"]) for name, m in manifests.items()}
    assert recorded == {"none": ("none", None), "cell": ("cell", None),
                        "window": ("window", 320), "window48": ("window", 48)}
    assert {name: Store(tmp_path / name).crop for name in modes} == recorded
    # a store of another crop is another store: its cache key differs
    assert len({m["content_checksum"] for m in manifests.values()}) == 4


@pytest.mark.parametrize("args, crop, text", [
    (["--crop", "cell"], ("cell", None), "crop=cell,"),
    (["--crop", "window", "--window", "200"], ("window", 200), "crop=window 200 px,"),
    (["--crop", "none"], ("none", None), "crop=none,"),
    (["--no-crop"], ("none", None), "crop=none,"),
    ([], ("window", 320), "crop=window 320 px,"),
], ids=["cell", "window-200", "none", "no-crop", "default"])
def test_cli_ingest_crop_options(make_tree, tmp_path, capsys, args, crop, text):
    store = tmp_path / "store"

    rc = cli.main(["ingest", str(make_tree()), "--store", str(store), "--size", "16",
                   "--workers", "1", "-q", *args])

    assert rc == 0
    assert text in capsys.readouterr().out
    assert Store(store).crop == crop


def test_cli_ingest_bad_window_exits_2(make_tree, tmp_path, capsys):
    rc = cli.main(["ingest", str(make_tree()), "--store", str(tmp_path / "s"), "--window", "4",
                   "-q"])

    assert rc == 2
    assert "window=4: the crop window side must be 8 to 4096 px" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("old, crop, text", [(True, ("cell", None), "crop=cell,"),
                                             (False, ("none", None), "crop=none,")])
def test_store_crop_reads_old_manifest_with_bool_crop(make_tree, tmp_path, old, crop, text):
    store = tmp_path / "store"
    manifest = ingest(make_tree(), str(store), size=16, crop=crop[0], workers=1, progress=False)
    legacy = {k: v for k, v in manifest.items() if k not in ("window", "duplicates")}
    (store / MANIFEST).write_text(json.dumps({**legacy, "crop": old}))

    assert Store(store).crop == crop
    assert text in describe(Store(store).manifest)


# ---------------------------------------------------------------------------------------------
# Distributions and image formats


def test_ingest_tcia_package_equals_kaggle_tree(make_tree, make_tcia_tree, tmp_path, capsys):
    kaggle = ingest(make_tree(), str(tmp_path / "kaggle"), size=16, workers=1, progress=False)
    tcia_root = make_tcia_tree(package=True, nested=True, csv_at="beside", final=True)

    rc = cli.main(["ingest", str(tcia_root.parent), "--store", str(tmp_path / "tcia-store"),
                   "--size", "16", "--workers", "1", "-q"])

    assert rc == 0
    assert "C-NMC_test_final_phase_data/ has no public labels and is ignored" in (
        capsys.readouterr().out)
    tcia = Store(tmp_path / "tcia-store").manifest
    for key in ("n_images", "splits", "folds", "patients", "crop", "window"):
        assert tcia[key] == kaggle[key], key
    a, b = Store(tmp_path / "kaggle").load(None), Store(tmp_path / "tcia-store").load(None)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert b.image_ids[0] == "C-NMC_training_data/fold_0/all/UID_10_0_1_all"


def test_ingest_png_copy_gives_same_pixels_as_bmp(make_tree, reencode, tmp_path):
    bmp = make_tree("bmp", side=64)
    png = make_tree("png", side=64)
    for p in sorted(png.rglob("*.bmp")):  # validation files too: the CSV still says N.bmp
        reencode(p, ".png")

    a = ingest(bmp, str(tmp_path / "a"), size=32, window=48, workers=1, progress=False)
    b = ingest(png, str(tmp_path / "b"), size=32, window=48, workers=1, progress=False)

    assert b["n_images"] == a["n_images"] == 10 and b["duplicates"] == []
    sa, sb = Store(tmp_path / "a").load(None), Store(tmp_path / "b").load(None)
    assert list(sa.image_ids) == list(sb.image_ids)
    np.testing.assert_array_equal(sa.images, sb.images)
    assert sa.images.max() > 50
    # other file bytes, so another source checksum and another store checksum
    assert ({r["source_sha256"] for r in store_rows(str(tmp_path / "a"))}
            .isdisjoint(r["source_sha256"] for r in store_rows(str(tmp_path / "b"))))


def test_ingest_reads_upper_case_and_jpeg_files(make_tree, reencode, tmp_path):
    ref = make_tree("ref", side=64)
    root = make_tree("mixed", side=64)
    for p in (root / "training_data/fold_0/all").iterdir():
        p.rename(p.with_suffix(".BMP"))
    for p in (root / "training_data/fold_0/hem").iterdir():
        reencode(p, ".JPG")

    ingest(ref, str(tmp_path / "s1"), size=32, crop="none", workers=1, progress=False)
    manifest = ingest(root, str(tmp_path / "s2"), size=32, crop="none", workers=1,
                      progress=False)

    assert manifest["n_images"] == 10
    want, got = Store(tmp_path / "s1").load(None), Store(tmp_path / "s2").load(None)
    assert list(want.image_ids) == list(got.image_ids)
    jpg = np.char.find(got.image_ids.astype(str), "fold_0/hem") >= 0
    np.testing.assert_array_equal(got.images[~jpg], want.images[~jpg])  # .BMP: same bytes
    diff = np.abs(got.images[jpg].astype(int) - want.images[jpg].astype(int))
    assert diff.mean() < 3  # JPEG is lossy, but it is the same cell


@pytest.mark.parametrize("content", ["text", "truncated"])
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".BMP", ".tif"])
def test_ingest_names_undecodable_file_whatever_its_extension(make_tree, reencode, tmp_path,
                                                              suffix, content):
    root = make_tree()
    bad = reencode(root / "training_data/fold_1/hem/UID_H11_0_1_hem.bmp", suffix)
    data = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if content == "text" else data[: len(data) // 2])

    with pytest.raises(DatasetError, match=r"1 image file\(s\) cannot be read") as err:
        ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert f"{bad.resolve()}: not a readable image" in str(err.value)
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------------------------
# Duplicates by decoded pixels


def test_ingest_finds_same_pixels_saved_in_other_bytes(make_tree, reencode, tmp_path):
    root = make_tree()
    images = root / "validation_data/C-NMC_test_prelim_phase_data"
    (images / "1.bmp").unlink()  # labelled all in the CSV; now a PNG of a training cell
    copy = reencode(root / "training_data/fold_0/all/UID_10_0_1_all.bmp", ".png",
                    dest=images / "1.png")
    assert copy.read_bytes() != (root / "training_data/fold_0/all/UID_10_0_1_all.bmp").read_bytes()

    manifest = ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)

    pair = ["training_data/fold_0/all/UID_10_0_1_all",
            "validation_data/C-NMC_test_prelim_phase_data/1"]
    assert manifest["duplicates"] == [pair]
    assert manifest["duplicate_warnings"] == [
        "identical image (same decoded pixels) in two splits and patients: "
        f"{pair[0]} (UID_10_0_1_all.bmp), {pair[1]} (UID_50_1_1_all.bmp)"]
    assert f"same pixels saved twice: {pair[0]}, {pair[1]}" in describe(manifest)


def test_ingest_records_duplicates_within_one_patient_without_warning(make_tree, tmp_path):
    root = make_tree()
    src = root / "training_data/fold_0/all/UID_10_0_1_all.bmp"
    shutil.copyfile(src, src.with_name("UID_10_0_9_all.bmp"))

    manifest = ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert manifest["duplicates"] == [["training_data/fold_0/all/UID_10_0_1_all",
                                       "training_data/fold_0/all/UID_10_0_9_all"]]
    assert manifest["duplicate_warnings"] == []


@pytest.mark.parametrize("copy_to", [
    "training_data/fold_0/hem/UID_H10_9_1_hem.png",
    "validation_data/C-NMC_test_prelim_phase_data/2.png",  # labelled hem in the CSV
], ids=["training", "validation"])
def test_ingest_refuses_one_image_with_two_labels(make_tree, reencode, tmp_path, copy_to):
    root = make_tree()
    src = root / "training_data/fold_0/all/UID_10_0_1_all.bmp"
    if copy_to.startswith("validation"):
        (root / copy_to).with_suffix(".bmp").unlink()
    reencode(src, ".png", dest=root / copy_to)

    with pytest.raises(DatasetError, match="saved more than once with different labels") as err:
        ingest(root, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert "training_data/fold_0/all/UID_10_0_1_all (UID_10_0_1_all.bmp)" in str(err.value)
    assert Path(copy_to).with_suffix("").as_posix() in str(err.value)
    assert not (tmp_path / "store").exists()


DEV_DUPLICATE = "training_data/fold_1/all/UID_51_59_2_all"  # = validation 59.bmp, other bytes


def test_ingest_names_real_duplicate_pair(real_data, dev_data, tmp_path):
    root = tmp_path / "data" / "C-NMC_Leukemia"
    for p in (real_data / "C-NMC_Leukemia").rglob("*"):
        if p.is_file():  # copyfile: the shared copies are read-only
            dest = root / p.relative_to(real_data / "C-NMC_Leukemia")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    shutil.copyfile(dev_data / "C-NMC_Leukemia" / f"{DEV_DUPLICATE}.png",
                    root / f"{DEV_DUPLICATE}.png")

    manifest = ingest(root.parent, str(tmp_path / "store"), size=16, workers=1, progress=False)

    assert manifest["n_images"] == 241
    pair = [DEV_DUPLICATE, "validation_data/C-NMC_test_prelim_phase_data/59"]
    assert manifest["duplicates"] == [pair]
    assert manifest["duplicate_warnings"] == [
        "identical image (same decoded pixels) in two splits and patients: "
        f"{pair[0]} (UID_51_59_2_all.png), {pair[1]} (UID_55_12_2_all.bmp)"]
