"""Tests for leukemia.dataset: the real C-NMC sample against its MANIFEST, and every layout error.

Layout errors are provoked on small generated trees (``make_tree`` in conftest.py) so each test
breaks exactly one thing; every error must be a DatasetError naming the file or folder at fault.
TCIA's layout (``make_tcia_tree``) must scan to the same cells as Kaggle's, images may be in any
format OpenCV reads, and the real dev set (``dev_data``) scans as it is (training only).

    .venv/bin/python -m pytest -q tests/test_dataset.py
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from pathlib import Path

import pytest

from leukemia import dataset
from leukemia.dataset import DatasetError, find_layout, parse_name, read_labels_csv, scan

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


def test_find_layout_accepts_root_or_parent(make_tree):
    root = make_tree()

    assert find_layout(root).root == root
    assert find_layout(root.parent).root == root
    assert ([r.image_id for r in scan(root).records]
            == [r.image_id for r in scan(root.parent).records])
    assert scan(root.parent).records[0].image_id == "training_data/fold_0/all/UID_10_0_1_all"


def test_find_layout_rejects_folder_without_cnmc_layout(tmp_path, write_bmp):
    other = tmp_path / "photos"
    write_bmp(other / "train" / "a.bmp", seed=1)

    with pytest.raises(DatasetError, match="photos is not the C-NMC layout"):
        scan(other)


def test_find_layout_rejects_missing_folder(tmp_path):
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
    assert result.notes == ["no labelled validation images (training data only): a search "
                            "reports its cross-validated estimate as its final score"]


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


# ---------------------------------------------------------------------------------------------
# TCIA's layout


def same_cells(result: dataset.Scan) -> list[tuple]:
    """What a scan says about each image, leaving out where the distribution keeps it."""
    return [(r.split, r.fold, r.patient_id, r.label, r.original_name, Path(r.source_path).name,
             Path(r.source_path).read_bytes()) for r in result.records]


TCIA_VARIANTS = {
    "csv-inside": {"csv_at": "inside"},
    "csv-beside": {"csv_at": "beside"},
    "package": {"package": True},
    "nested": {"nested": True},
    "nested-csv-beside-package": {"nested": True, "csv_at": "beside", "package": True},
}


@pytest.mark.parametrize("variant", list(TCIA_VARIANTS))
def test_scan_tcia_layout_matches_kaggle_tree(make_tree, make_tcia_tree, variant):
    kw = {"validation": 3, "missing_rows": 1}
    kaggle = scan(make_tree(**kw))
    root = make_tcia_tree(**TCIA_VARIANTS[variant], **kw)
    # a download unpacked as "PKG - C-NMC 2019/" is found from the folder holding it
    given = root.parent if TCIA_VARIANTS[variant].get("package") else root

    tcia = scan(given)

    assert dataset.find_layout(given).kind == "tcia"
    assert tcia.root == find_layout(given).root == find_layout(root).root == root
    assert same_cells(tcia) == same_cells(kaggle) == same_cells(scan(root))
    assert len(tcia.records) == 11 and tcia.missing_validation == kaggle.missing_validation
    prelim = ("C-NMC_test_prelim_phase_data/C-NMC_test_prelim_phase_data"
              if TCIA_VARIANTS[variant].get("nested") else "C-NMC_test_prelim_phase_data")
    assert [r.image_id for r in tcia.records if r.split == "validation"] == [
        f"{prelim}/{n}" for n in (1, 2, 3)]
    assert tcia.records[0].image_id == "C-NMC_training_data/fold_0/all/UID_10_0_1_all"
    assert tcia.notes == kaggle.notes


def test_scan_tcia_ignores_final_phase_folder_with_note(make_tcia_tree):
    root = make_tcia_tree(final=True)

    result = scan(root)

    assert len(result.records) == 10
    assert not any("final_phase" in r.image_id for r in result.records)
    assert "C-NMC_test_final_phase_data/ has no public labels and is ignored" in result.notes


def test_scan_tcia_training_only_has_note(make_tcia_tree):
    root = make_tcia_tree(validation=0)
    assert not (root / "C-NMC_test_prelim_phase_data").exists()

    result = scan(root)

    assert {r.split for r in result.records} == {"training"} and len(result.records) == 8
    assert any("training data only" in n for n in result.notes)


@pytest.mark.parametrize("csv_at", ["inside", "beside"])
def test_scan_rejects_tcia_prelim_folder_without_labels_csv(make_tcia_tree, csv_at):
    root = make_tcia_tree(csv_at=csv_at)
    prelim = root / "C-NMC_test_prelim_phase_data"
    (prelim if csv_at == "inside" else root).joinpath(dataset.VALIDATION_CSV).unlink()

    with pytest.raises(DatasetError, match="have no labels") as err:
        scan(root)
    assert str(err.value).startswith(str(prelim))
    assert str(prelim / dataset.VALIDATION_CSV) in str(err.value)
    assert str(root / dataset.VALIDATION_CSV) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Image formats


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".BMP", ".PNG",
                                    ".Jpg"])
def test_scan_reads_any_image_format_and_letter_case(make_tree, reencode, suffix):
    root = make_tree()
    before = [(r.image_id, r.label, r.patient_id) for r in scan(root).records]
    fold0_all = root / "training_data/fold_0/all"
    new = [reencode(p, suffix) for p in sorted(fold0_all.iterdir())]

    result = scan(root)

    assert [(r.image_id, r.label, r.patient_id) for r in result.records] == before
    sources = {Path(r.source_path) for r in result.records}
    assert {p.resolve() for p in new} <= sources
    assert [r.original_name for r in result.records][:2] == [p.name for p in new]


def test_scan_finds_validation_image_saved_in_another_format(make_tree, reencode, caplog):
    root = make_tree(validation=2)
    images = root / "validation_data/C-NMC_test_prelim_phase_data"
    png = reencode(images / "1.bmp", ".png")  # the CSV still says 1.bmp

    with caplog.at_level(logging.WARNING, logger="leukemia.dataset"):
        result = scan(root)

    val = [r for r in result.records if r.split == "validation"]
    assert [(r.image_id, Path(r.source_path)) for r in val] == [
        ("validation_data/C-NMC_test_prelim_phase_data/1", png.resolve()),
        ("validation_data/C-NMC_test_prelim_phase_data/2", (images / "2.bmp").resolve())]
    assert result.missing_validation == []
    assert "not listed" not in caplog.text


def test_scan_rejects_same_cell_in_two_formats_naming_both(make_tree, reencode):
    root = make_tree()
    bmp = root / "training_data/fold_0/all/UID_10_0_1_all.bmp"
    png = reencode(bmp, ".png", dest=bmp.with_suffix(".png"))

    with pytest.raises(DatasetError, match="two image formats") as err:
        scan(root)
    assert str(bmp.resolve()) in str(err.value) and str(Path(png).resolve()) in str(err.value)


# ---------------------------------------------------------------------------------------------
# The real dev set (official fold_1 as PNG, training only)


def test_scan_real_dev_set_as_it_is(dev_data):
    with open(dev_data / "MANIFEST.csv", newline="") as fh:
        manifest = {row["file"]: row for row in csv.DictReader(fh)}

    result = scan(dev_data)

    assert result.root == dev_data / "C-NMC_Leukemia"
    assert len(result.records) == len(manifest) == 3499
    assert {r.split for r in result.records} == {"training"}
    assert {r.fold for r in result.records} == {1}
    assert len({r.patient_id for r in result.records}) == 14
    assert {r.patient_id for r in result.records if r.label == 0} == {"H10", "H14", "H22"}
    for r in result.records:
        row = manifest[f"C-NMC_Leukemia/{r.image_id}.png"]
        assert (r.label, r.patient_id) == (int(row["label"]), row["patient_id"]), r.image_id
    assert result.missing_validation == []
    assert any("training data only" in n for n in result.notes)
