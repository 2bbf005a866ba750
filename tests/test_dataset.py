"""Tests for leukemia.dataset: the real C-NMC sample against its MANIFEST, and every layout error.

Layout errors are provoked on small generated trees (``make_tree`` in conftest.py) so each test
breaks exactly one thing; every error must be a DatasetError naming the file or folder at fault.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from pathlib import Path

import pytest

from leukemia import dataset
from leukemia.dataset import DatasetError, find_root, parse_name, read_labels_csv, scan

CSV_REL = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"


def read_manifest(real_data: Path) -> dict[str, dict[str, str]]:
    """MANIFEST.csv rows keyed by ``file`` (``C-NMC_Leukemia/<image_id>.bmp``)."""
    with open(real_data / "MANIFEST.csv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def manifest_key(image_id: str) -> str:
    return f"C-NMC_Leukemia/{image_id}.bmp"


# ---------------------------------------------------------------------------------------------
# The real sample


def test_scan_real_sample_matches_manifest(real_data):
    manifest = read_manifest(real_data)
    result = scan(real_data)

    assert len(result.records) == len(manifest) == 240
    assert {manifest_key(r.image_id) for r in result.records} == set(manifest)
    for r in result.records:
        row = manifest[manifest_key(r.image_id)]
        assert r.label == int(row["label"]), r.image_id
        assert r.patient_id == row["patient_id"], r.image_id
        assert r.original_name == row["original_name"], r.image_id
        if row["split"] == "training":
            assert (r.split, f"fold_{r.fold}") == ("training", row["fold"]), r.image_id
        else:
            assert row["split"] == "validation(prelim_test)" and row["fold"] == ""
            assert (r.split, r.fold) == ("validation", None), r.image_id
        assert Path(r.source_path).is_file()
        assert Path(r.source_path) == (real_data / row["file"]).resolve()


def test_scan_real_sample_counts_missing_validation_rows(real_data):
    result = scan(real_data)

    assert len(result.missing_validation) == 1867 - 40
    assert result.root == (real_data / "C-NMC_Leukemia")
    assert any("1827 of 1867" in n for n in result.notes)


def test_scan_real_sample_orders_training_then_validation(real_data):
    splits = [r.split for r in scan(real_data).records]

    assert splits == ["training"] * 200 + ["validation"] * 40
    assert [r.image_id for r in scan(real_data).records] == [
        r.image_id for r in scan(real_data / "C-NMC_Leukemia").records]


# ---------------------------------------------------------------------------------------------
# File names


def test_parse_name_reads_patient_and_label():
    assert parse_name("UID_11_15_3_all.bmp") == ("11", 1)
    assert parse_name("UID_H10_130_2_hem.bmp") == ("H10", 0)
    assert parse_name("UID_h3_4_1_hem.bmp") == ("h3", 0)
    assert parse_name("UID_57_29_1_all") == ("57", 1)


def test_parse_name_rejects_other_names():
    with pytest.raises(ValueError, match="cell_1.bmp"):
        parse_name("cell_1.bmp")


# ---------------------------------------------------------------------------------------------
# Finding the root


def test_find_root_accepts_root_or_parent(make_tree):
    root = make_tree()

    assert find_root(root) == root
    assert find_root(root.parent) == root
    assert ([r.image_id for r in scan(root).records]
            == [r.image_id for r in scan(root.parent).records])
    assert scan(root.parent).records[0].image_id == "training_data/fold_0/all/UID_10_0_1_all"


def test_find_root_rejects_folder_without_cnmc_layout(tmp_path, write_bmp):
    other = tmp_path / "photos"
    write_bmp(other / "train" / "a.bmp", seed=1)

    with pytest.raises(DatasetError, match="photos is not the C-NMC layout"):
        scan(other)


def test_find_root_rejects_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: no such folder"):
        scan(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Training folders


def test_scan_tiny_tree_records(make_tree):
    result = scan(make_tree(folds=(0, 1), per_class=2, validation=2))

    assert len(result.records) == 10
    train = [r for r in result.records if r.split == "training"]
    assert sorted({(r.fold, r.patient_id, r.label) for r in train}) == [
        (0, "10", 1), (0, "H10", 0), (1, "11", 1), (1, "H11", 0)]
    val = [r for r in result.records if r.split == "validation"]
    assert [(r.image_id, r.patient_id, r.label, r.original_name, r.fold) for r in val] == [
        ("validation_data/C-NMC_test_prelim_phase_data/1", "50", 1, "UID_50_1_1_all.bmp", None),
        ("validation_data/C-NMC_test_prelim_phase_data/2", "H50", 0, "UID_H50_2_1_hem.bmp", None),
    ]
    assert result.missing_validation == [] and result.notes == []


def test_scan_rejects_empty_class_folder(make_tree):
    root = make_tree()
    hem = root / "training_data/fold_1/hem"
    for p in hem.iterdir():
        p.unlink()

    with pytest.raises(DatasetError, match=re.escape(f"{hem}: class folder is empty")):
        scan(root)


def test_scan_rejects_missing_class_folder(make_tree):
    root = make_tree()
    shutil.rmtree(root / "training_data/fold_0/all")

    with pytest.raises(DatasetError, match="fold_0/all: class folder missing"):
        scan(root)


def test_scan_rejects_training_data_without_folds(make_tree):
    root = make_tree()
    for fold in (root / "training_data").iterdir():
        fold.rename(fold.with_name(fold.name.replace("fold_", "split_")))

    with pytest.raises(DatasetError, match="training_data: no fold_<k>/ folders"):
        scan(root)


def test_scan_rejects_file_named_all_in_hem_folder(make_tree, write_bmp):
    root = make_tree()
    wrong = write_bmp(root / "training_data/fold_0/hem/UID_H10_7_1_all.bmp", seed=99)

    with pytest.raises(DatasetError, match="do not carry a valid patient") as err:
        scan(root)
    assert f"{wrong} (named all but in hem/)" in str(err.value)


def test_scan_rejects_training_file_without_cnmc_name(make_tree, write_bmp):
    root = make_tree()
    odd = write_bmp(root / "training_data/fold_1/all/cell_7.bmp", seed=99)

    with pytest.raises(DatasetError, match="do not carry a valid patient") as err:
        scan(root)
    assert str(odd) in str(err.value)


def test_scan_ignores_non_image_files(make_tree, caplog):
    root = make_tree()
    (root / "training_data/fold_0/all/notes.txt").write_text("not an image")

    with caplog.at_level(logging.INFO, logger="leukemia.dataset"):
        result = scan(root)

    assert len(result.records) == 10
    assert "notes.txt" in caplog.text


def test_scan_rejects_patient_in_two_folds(make_tree, write_bmp):
    root = make_tree(folds=(0, 1))
    leak = write_bmp(root / "training_data/fold_1/hem/UID_H10_9_1_hem.bmp", seed=99)

    with pytest.raises(DatasetError, match="more than one training fold") as err:
        scan(root)
    assert "patient H10: folds [0, 1]" in str(err.value)
    assert str(leak) in str(err.value)


def test_scan_ignores_testing_data_with_note(make_tree, write_bmp):
    root = make_tree()
    write_bmp(root / "testing_data/C-NMC_test_final_phase_data/1.bmp", seed=99)

    result = scan(root)

    assert len(result.records) == 10
    assert not any(r.image_id.startswith("testing_data") for r in result.records)
    assert "testing_data/ has no public labels and is ignored" in result.notes


# ---------------------------------------------------------------------------------------------
# Validation folder and labels CSV


def test_scan_counts_validation_rows_without_image(make_tree):
    result = scan(make_tree(validation=2, missing_rows=3))

    assert result.missing_validation == ["3.bmp", "4.bmp", "5.bmp"]
    assert sum(r.split == "validation" for r in result.records) == 2
    assert any(n.startswith("3 of 5 validation images") for n in result.notes)


def test_scan_without_validation_folder_has_training_only(make_tree):
    root = make_tree()
    shutil.rmtree(root / "validation_data")

    result = scan(root)

    assert {r.split for r in result.records} == {"training"}


def test_scan_rejects_validation_images_without_labels_csv(make_tree):
    root = make_tree()
    csv_path = root / CSV_REL
    csv_path.unlink()

    with pytest.raises(DatasetError, match=re.escape(f"{csv_path}: labels CSV missing")):
        scan(root)


def test_read_labels_csv_rejects_missing_column(make_tree):
    csv_path = make_tree() / CSV_REL
    csv_path.write_text("Patient_ID,new_names\nUID_50_1_1_all.bmp,1.bmp\n")

    with pytest.raises(DatasetError, match=r"missing column\(s\) \['labels'\]") as err:
        scan(csv_path.parents[2])
    assert str(err.value).startswith(str(csv_path))


def test_read_labels_csv_rejects_label_other_than_0_or_1(make_tree):
    csv_path = make_tree() / CSV_REL
    csv_path.write_text("Patient_ID,new_names,labels\nUID_50_1_1_all.bmp,1.bmp,1\n"
                        "UID_H50_2_1_hem.bmp,2.bmp,2\n")

    with pytest.raises(DatasetError, match="line 3: labels='2'") as err:
        read_labels_csv(csv_path)
    assert str(err.value).startswith(str(csv_path))


def test_read_labels_csv_rejects_patient_id_that_is_not_a_cell_name(make_tree):
    csv_path = make_tree() / CSV_REL
    csv_path.write_text("Patient_ID,new_names,labels\n57,1.bmp,1\n")

    with pytest.raises(DatasetError, match="line 2: Patient_ID='57' is not a UID_ name") as err:
        read_labels_csv(csv_path)
    assert str(err.value).startswith(str(csv_path))


def test_read_labels_csv_rejects_binary_file(make_tree):
    csv_path = make_tree() / CSV_REL
    csv_path.write_bytes(b"\xff\xfe\x00\x81\x9f" * 20)

    with pytest.raises(DatasetError, match="not a text CSV") as err:
        read_labels_csv(csv_path)
    assert str(err.value).startswith(str(csv_path))


def test_read_labels_csv_reads_bom_crlf_and_padding(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfPatient_ID, new_names ,labels\r\n"
                         b"UID_57_29_1_all.bmp, 1.bmp ,1\r\nUID_H30_2_1_hem.bmp,2.bmp, 0\r\n")

    assert read_labels_csv(csv_path) == [("UID_57_29_1_all.bmp", "1.bmp", 1),
                                         ("UID_H30_2_1_hem.bmp", "2.bmp", 0)]


def test_scan_rejects_csv_label_contradicting_file_name(make_tree):
    csv_path = make_tree() / CSV_REL
    csv_path.write_text("Patient_ID,new_names,labels\nUID_50_1_1_all.bmp,1.bmp,0\n")

    with pytest.raises(DatasetError, match="UID_50_1_1_all.bmp is labelled 0") as err:
        scan(csv_path.parents[2])
    assert str(err.value).startswith(str(csv_path))


def test_scan_warns_about_patient_in_training_and_validation(make_tree, caplog):
    csv_path = make_tree() / CSV_REL
    csv_path.write_text("Patient_ID,new_names,labels\nUID_10_1_1_all.bmp,1.bmp,1\n")

    with caplog.at_level(logging.WARNING, logger="leukemia.dataset"):
        result = scan(csv_path.parents[2])

    assert any("['10']" in n and "both training and validation" in n for n in result.notes)
    assert any(r.levelno == logging.WARNING and "['10']" in r.getMessage()
               for r in caplog.records)


def test_scan_constants_match_the_published_layout():
    assert dataset.LABELS == {"all": 1, "hem": 0}
    assert dataset.CSV_COLUMNS == ("Patient_ID", "new_names", "labels")
