"""Tests for leukemia.demo: synthetic data in the C-NMC layout with overlapping classes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from leukemia.dataset import VALIDATION, VALIDATION_CSV, VALIDATION_DIR, VALIDATION_IMAGES, scan
from leukemia.demo import write_demo_data

SMALL = dict(folds=3, patients_per_class=2, images_per_patient=4,
             validation_patients_per_class=2, validation_images_per_patient=3, frame=64)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_data(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _dark_fraction(img: np.ndarray) -> float:
    """Share of the cell's pixels on the dark (nucleus) side of an Otsu threshold."""
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    cell = gray[img.any(axis=2)]
    t, _ = cv2.threshold(cell.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float((cell <= t).mean())


def test_write_demo_data_scans_cleanly(demo_root: Path) -> None:
    s = scan(demo_root.parent)
    assert s.root == demo_root
    assert s.missing_validation == [] and s.notes == []
    train = [r for r in s.records if r.split != VALIDATION]
    val = [r for r in s.records if r.split == VALIDATION]
    assert len(train) == 3 * 2 * (8 + 4)  # ALL patients get twice the images
    assert len(val) == 2 * (6 + 3)
    for fold in range(3):
        assert {r.label for r in train if r.fold == fold} == {0, 1}
    for r in s.records:
        assert r.patient_id.startswith("H") == (r.label == 0)
        assert r.patient_id.lstrip("H").isdigit()
    folds: dict[str, set[int | None]] = defaultdict(set)
    for r in train:
        folds[r.patient_id].add(r.fold)
    assert all(len(f) == 1 for f in folds.values())
    assert not {r.patient_id for r in val} & set(folds)
    assert sum(r.label for r in train) == 2 * sum(1 - r.label for r in train)


def test_write_demo_data_validation_csv_matches_files(demo_root: Path) -> None:
    vdir = demo_root / VALIDATION_DIR
    raw = (vdir / VALIDATION_CSV).read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[0] == b"Patient_ID,new_names,labels" and lines[-1] == b""
    assert b"\n" not in raw.replace(b"\r\n", b"")
    rows = [line.decode().split(",") for line in lines[1:-1]]
    files = sorted(p.name for p in (vdir / VALIDATION_IMAGES).iterdir())
    assert sorted(r[1] for r in rows) == files
    assert sorted(files, key=lambda n: int(n.split(".")[0])) == [f"{i}.bmp" for i in
                                                                   range(1, len(files) + 1)]
    for original, _, label in rows:
        assert original.startswith("UID_") and original.endswith(".bmp")
        assert original.removesuffix(".bmp").endswith("_all" if label == "1" else "_hem")
    assert [r[2] for r in rows] != sorted(r[2] for r in rows)  # classes are shuffled
    assert "not real cells" in (demo_root.parent / "README.txt").read_text().lower()


def test_write_demo_data_images_are_segmented_cells(demo_root: Path) -> None:
    paths = sorted(demo_root.rglob("*.bmp"))
    assert paths
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        for corner in (img[:4, :4], img[:4, -4:], img[-4:, :4], img[-4:, -4:]):
            assert not corner.any()
        assert img[28:36, 28:36].all(axis=2).all()  # the middle is cell, not background
        assert p.read_bytes()[:2] == b"BM"


def test_write_demo_data_same_seed_same_bytes(tmp_path: Path, demo_root: Path) -> None:
    again = write_demo_data(tmp_path / "a", seed=0, **SMALL)
    assert _files(again) == _files(demo_root)
    other = _files(write_demo_data(tmp_path / "b", seed=1, **SMALL))
    same = _files(demo_root)
    assert other.keys() == same.keys()  # names depend on the counts only...
    assert sum(other[k] != same[k] for k in same) > 0.9 * len(same)  # ...pixels on the seed


def test_write_demo_data_classes_differ_but_overlap(tmp_path: Path) -> None:
    root = write_demo_data(tmp_path, folds=2, patients_per_class=4, images_per_patient=10,
                           validation_patients_per_class=0, frame=96, seed=3)
    feats: dict[int, list[float]] = {0: [], 1: []}
    for r in scan(root).records:
        feats[r.label].append(_dark_fraction(cv2.imread(r.source_path)))
    blast, normal = np.array(feats[1]), np.array(feats[0])
    assert blast.mean() > normal.mean() + 0.03  # blasts: larger nucleus-to-cell ratio
    assert blast.min() < normal.max()  # but no threshold on it separates the classes
    threshold = np.linspace(0, 1, 201)
    accuracy = [((blast > t).sum() + (normal <= t).sum()) / (len(blast) + len(normal))
                for t in threshold]
    assert max(accuracy) < 0.95


def test_write_demo_data_refuses_existing_folder(tmp_path: Path) -> None:
    small = dict(SMALL, folds=1, patients_per_class=1, validation_patients_per_class=0)
    write_demo_data(tmp_path, seed=0, **small)
    with pytest.raises(FileExistsError, match="C-NMC_Leukemia.*overwrite=True"):
        write_demo_data(tmp_path, seed=0, **small)


def test_write_demo_data_overwrite_replaces(tmp_path: Path) -> None:
    small = dict(SMALL, folds=1, patients_per_class=1, validation_patients_per_class=0)
    root = write_demo_data(tmp_path, seed=0, **small)
    (root / "stale.txt").write_text("old")
    seen: list[tuple[int, int]] = []
    assert write_demo_data(tmp_path, seed=1, overwrite=True,
                           progress=lambda d, t: seen.append((d, t)), **small) == root
    assert not (root / "stale.txt").exists()
    assert seen == [(i, 12) for i in range(1, 13)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C-NMC_Leukemia", "README.txt"]
    assert len(scan(tmp_path).records) == 12


def test_write_demo_data_fills_empty_root(tmp_path: Path) -> None:
    (tmp_path / "C-NMC_Leukemia").mkdir()
    write_demo_data(tmp_path, **dict(SMALL, folds=1, patients_per_class=1))
    assert scan(tmp_path).records


def test_write_demo_data_rejects_no_folds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folds=0"):
        write_demo_data(tmp_path, folds=0)


def test_write_demo_data_rejects_tiny_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frame=8"):
        write_demo_data(tmp_path, frame=8)


def test_write_demo_data_rejects_negative_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation_patients_per_class=-1"):
        write_demo_data(tmp_path, validation_patients_per_class=-1)
