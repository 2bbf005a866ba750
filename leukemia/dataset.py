"""Read a C-NMC 2019 folder (Kaggle's or TCIA's distribution) into labelled records.

Kaggle's layout (``andrewmvd/leukemia-classification``)::

    C-NMC_Leukemia/
      training_data/fold_{0,1,2}/{all,hem}/UID_<patient>_<image>_<cell>_<all|hem>.bmp
      validation_data/C-NMC_test_prelim_phase_data/<N>.bmp
      validation_data/C-NMC_test_prelim_phase_data_labels.csv   (Patient_ID,new_names,labels)
      testing_data/...                                          (unlabelled: ignored)

TCIA's layout (optionally inside a ``PKG - C-NMC 2019/`` folder)::

    C-NMC_training_data/fold_{0,1,2}/{all,hem}/UID_....bmp
    C-NMC_test_prelim_phase_data/[C-NMC_test_prelim_phase_data/]<N>.bmp
    C-NMC_test_prelim_phase_data_labels.csv       (inside the prelim folder or beside it)
    C-NMC_test_final_phase_data/...               (unlabelled: ignored)

Images may be in any format OpenCV decodes (``.bmp .png .jpg .jpeg .tif .tiff``, any letter
case): re-encoded mirrors are common. A folder with training data only is read with a note (a
search on it reports its cross-validated estimate as its final score).

``scan(root)`` accepts the dataset folder or its parent and returns a :class:`Scan`: one
:class:`Record` per image plus what was noticed on the way (validation rows whose image is not on
disk, ignored folders). Every problem with the layout raises :class:`DatasetError` naming the file
or folder and how to fix it. Pixels are not read here; that is ingest's job (``store.py``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT_NAME = "C-NMC_Leukemia"
TRAINING = "training"
VALIDATION = "validation"
LABELS = {"all": 1, "hem": 0}  # 1 = ALL blast (positive class), 0 = normal (hem)
VALIDATION_DIR = "validation_data"
VALIDATION_IMAGES = "C-NMC_test_prelim_phase_data"
VALIDATION_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
TCIA_TRAINING = "C-NMC_training_data"
TCIA_FINAL = "C-NMC_test_final_phase_data"
TCIA_PACKAGE = "PKG - C-NMC 2019"
CSV_COLUMNS = ("Patient_ID", "new_names", "labels")
IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}

_NAME = re.compile(r"^UID_(?P<patient>[^_]+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)$", re.I)
_FOLD = re.compile(r"^fold_(\d+)$")


class DatasetError(ValueError):
    """The folder is not a readable C-NMC dataset; the message names the file and the fix."""


@dataclass(frozen=True)
class Record:
    """One labelled image of the dataset."""

    image_id: str  # path relative to the C-NMC root, without suffix: unique and traceable
    split: str  # "training" | "validation"
    fold: int | None  # 0-2 for training, None for validation
    patient_id: str  # "11" (ALL) or "H10"/"h3" (normal), from the UID_ name
    label: int  # 1 = ALL blast, 0 = normal
    source_path: str  # absolute path of the image file
    original_name: str  # the UID_... file name (validation files are renamed <N>.bmp on disk)


@dataclass
class Scan:
    """The result of :func:`scan`: records plus what was noticed."""

    root: Path
    records: list[Record]
    missing_validation: list[str] = field(default_factory=list)  # CSV rows with no file
    notes: list[str] = field(default_factory=list)


def parse_name(name: str) -> tuple[str, int]:
    """Return ``(patient_id, label)`` from a ``UID_<patient>_<image>_<cell>_<all|hem>`` name.

    Raises:
        ValueError: if the name does not follow the C-NMC pattern.
    """
    m = _NAME.match(Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name)
    if not m:
        raise ValueError(f"{name!r} is not a C-NMC cell name; "
                         "expected UID_<patient>_<image>_<cell>_<all|hem>.bmp")
    return m["patient"], LABELS[m["cls"].lower()]


@dataclass(frozen=True)
class Layout:
    """Where a distribution keeps its parts (``None``: absent)."""

    root: Path  # image ids are relative to this folder
    kind: str  # "kaggle" | "tcia"
    training: Path | None  # the folder holding fold_<k>/
    validation_images: Path | None  # the preliminary-test images
    validation_csv: Path | None  # their labels
    ignored: tuple[str, ...] = ()  # unlabelled folders present (notes)


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _tcia_layout(root: Path) -> Layout:
    train = root / TCIA_TRAINING
    prelim = root / VALIDATION_IMAGES
    images = csv_path = None
    if prelim.is_dir():
        nested = prelim / VALIDATION_IMAGES
        images = nested if nested.is_dir() and not _has_images(prelim) else prelim
        csv_path = next((c for c in (prelim / VALIDATION_CSV, root / VALIDATION_CSV,
                                     images / VALIDATION_CSV) if c.is_file()), None)
        if csv_path is None:
            raise DatasetError(
                f"{prelim}: the preliminary-test images have no labels: expected "
                f"{prelim / VALIDATION_CSV} or {root / VALIDATION_CSV} (columns "
                f"{','.join(CSV_COLUMNS)}, from TCIA's C-NMC 2019 download); put it there or "
                f"remove {prelim.name}/ to ingest the training data only")
    ignored = ((f"{TCIA_FINAL}/ has no public labels and is ignored",)
               if (root / TCIA_FINAL).is_dir() else ())
    return Layout(root, "tcia", train if train.is_dir() else None, images, csv_path, ignored)


def _kaggle_layout(root: Path) -> Layout:
    vdir = root / VALIDATION_DIR
    images = csv_path = None
    if vdir.is_dir():
        images = vdir / VALIDATION_IMAGES
        csv_path = next((c for c in (vdir / VALIDATION_CSV, images / VALIDATION_CSV)
                         if c.is_file()), None)
        if csv_path is None:
            raise DatasetError(f"{vdir / VALIDATION_CSV}: labels CSV missing; validation images "
                               f"cannot be labelled without it (columns {','.join(CSV_COLUMNS)})")
    ignored = (("testing_data/ has no public labels and is ignored",)
               if (root / "testing_data").is_dir() else ())
    train = root / "training_data"
    return Layout(root, "kaggle", train if train.is_dir() else None, images, csv_path, ignored)


def find_layout(path: str | Path) -> Layout:
    """Find a Kaggle or TCIA C-NMC distribution at ``path`` or one folder below it.

    Raises:
        DatasetError: ``path`` is missing, holds no known layout, or its validation images
            have no labels CSV.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder; point at a C-NMC_Leukemia folder (Kaggle), "
                           f"the folder holding {TCIA_TRAINING}/ (TCIA), or its parent")
    for cand in (path, path / ROOT_NAME, path / TCIA_PACKAGE):
        if (cand / "training_data").is_dir() or (cand / VALIDATION_DIR).is_dir():
            return _kaggle_layout(cand)
        if (cand / TCIA_TRAINING).is_dir() or (cand / VALIDATION_IMAGES).is_dir():
            return _tcia_layout(cand)
    raise DatasetError(
        f"{path} is not the C-NMC layout: expected "
        f"{ROOT_NAME}/training_data/fold_<k>/{{all,hem}}/ (Kaggle) or "
        f"{TCIA_TRAINING}/fold_<k>/{{all,hem}}/ (TCIA, optionally under '{TCIA_PACKAGE}/') "
        f"in it or one folder below; download andrewmvd/leukemia-classification (Kaggle) or "
        "C-NMC 2019 (TCIA) and unpack it, or run `leukemia demo-data DIR`"
    )


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    other = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if other:
        log.info("%s: ignoring %d non-image file(s), e.g. %s", folder, len(other), other[0])
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)


def _scan_training(layout: Layout) -> list[Record]:
    root, tdir = layout.root, layout.training
    if tdir is None:
        name = "training_data" if layout.kind == "kaggle" else TCIA_TRAINING
        raise DatasetError(f"{root}: no {name}/ folder; the C-NMC layout has "
                           f"{name}/fold_{{0,1,2}}/{{all,hem}}/")
    folds = sorted((int(m[1]), p) for p in tdir.iterdir()
                   if p.is_dir() and (m := _FOLD.match(p.name)))
    other = sorted(p.name for p in tdir.iterdir() if p.is_dir() and not _FOLD.match(p.name))
    if other:
        log.warning("%s: ignoring folder(s) %s (not fold_<k>)", tdir, other)
    if not folds:
        raise DatasetError(f"{tdir}: no fold_<k>/ folders in it; expected fold_0, fold_1, fold_2")
    records, bad_names = [], []
    for fold, fdir in folds:
        for cls, label in LABELS.items():
            cdir = fdir / cls
            if not cdir.is_dir():
                raise DatasetError(f"{cdir}: class folder missing; every fold needs all/ and hem/")
            files = _images_in(cdir)
            if not files:
                raise DatasetError(f"{cdir}: class folder is empty; put the {cls} images back or "
                                   "remove the whole fold")
            for p in files:
                try:
                    patient, name_label = parse_name(p.name)
                except ValueError:
                    bad_names.append(f"{p} (not UID_<patient>_<image>_<cell>_<all|hem>)")
                    continue
                if name_label != label:
                    bad_names.append(f"{p} (named {'all' if name_label else 'hem'} but in {cls}/)")
                    continue
                records.append(Record(
                    image_id=p.relative_to(root).with_suffix("").as_posix(), split=TRAINING,
                    fold=fold, patient_id=patient, label=label, source_path=str(p.resolve()),
                    original_name=p.name))
    if bad_names:
        raise DatasetError(f"{len(bad_names)} training file name(s) do not carry a valid patient "
                           "and class; rename or remove them:\n  " + "\n  ".join(bad_names))
    _check_unique_ids(records)
    return records


def _check_unique_ids(records: list[Record]) -> None:
    """Refuse one cell saved in two formats side by side (``x.bmp`` and ``x.png``)."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_id[r.image_id].append(r.source_path)
    twice = [" and ".join(paths) for paths in by_id.values() if len(paths) > 1]
    if twice:
        raise DatasetError(f"{len(twice)} cell(s) are in one folder in two image formats; keep "
                           "one file of each:\n  " + "\n  ".join(twice[:20]))


def read_labels_csv(path: Path) -> list[tuple[str, str, int]]:
    """Read the validation labels CSV into ``(original_name, new_name, label)`` rows."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in cols]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; found {cols}, "
                                   f"expected {list(CSV_COLUMNS)}")
            rows, bad = [], []
            for i, row in enumerate(reader, start=2):  # line 1 is the header
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                if row["labels"] not in ("0", "1"):
                    bad.append(f"line {i}: labels={row['labels']!r}")
                    continue
                try:
                    parse_name(row["Patient_ID"])
                except ValueError:
                    bad.append(f"line {i}: Patient_ID={row['Patient_ID']!r} is not a UID_ name")
                    continue
                rows.append((row["Patient_ID"], row["new_names"], int(row["labels"])))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text CSV ({e})") from e
    if bad:
        raise DatasetError(f"{path}: {len(bad)} bad row(s); labels must be 0 or 1 and Patient_ID "
                           "the original UID_ file name:\n  " + "\n  ".join(bad[:20]))
    return rows


def _scan_validation(layout: Layout) -> tuple[list[Record], list[str]]:
    root, csv_path, img_dir = layout.root, layout.validation_csv, layout.validation_images
    if csv_path is None or img_dir is None:
        return [], []
    records, missing = [], []
    rows = read_labels_csv(csv_path)
    seen = Counter(new_name for _, new_name, _ in rows)
    repeated = sorted(n for n, c in seen.items() if c > 1)
    if repeated:
        raise DatasetError(f"{csv_path}: new_names repeated in several rows: {repeated[:10]}; "
                           "each image file may be listed once")
    for original, new_name, label in rows:
        patient, name_label = parse_name(original)
        if name_label != label:
            raise DatasetError(f"{csv_path}: {original} is labelled {label} but its name says "
                               f"{'all' if name_label else 'hem'}; fix the row")
        p = _find_image(img_dir, new_name)
        if p is None:
            missing.append(new_name)
            continue
        records.append(Record(
            image_id=p.relative_to(root).with_suffix("").as_posix(), split=VALIDATION, fold=None,
            patient_id=patient, label=label, source_path=str(p.resolve()), original_name=original))
    if img_dir.is_dir():
        listed = {Path(n).stem for n in seen}
        unlisted = {p.name for p in _images_in(img_dir) if p.stem not in listed}
        if unlisted:
            log.warning("%s: %d image(s) not listed in %s are ignored, e.g. %s", img_dir,
                        len(unlisted), VALIDATION_CSV, sorted(unlisted)[0])
    return records, missing


def _find_image(folder: Path, name: str) -> Path | None:
    """``folder/name``, else that image in another format (a re-encoded mirror), if any."""
    if (folder / name).is_file():
        return folder / name
    for p in (folder.glob(f"{Path(name).stem}.*") if folder.is_dir() else ()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            return p
    return None


def check_patient_folds(records: list[Record]) -> None:
    """Raise if one patient's cells sit in two training folds (it would leak across splits)."""
    folds: dict[str, set[int]] = defaultdict(set)
    examples: dict[tuple[str, int], str] = {}
    for r in records:
        if r.split == TRAINING and r.fold is not None:
            folds[r.patient_id].add(r.fold)
            examples.setdefault((r.patient_id, r.fold), r.source_path)
    leaks = {p: sorted(f) for p, f in folds.items() if len(f) > 1}
    if leaks:
        lines = [f"patient {p}: folds {f}, e.g. " + ", ".join(examples[(p, k)] for k in f)
                 for p, f in sorted(leaks.items())]
        raise DatasetError("patients appear in more than one training fold, which would leak "
                           "their cells across the split; move each patient's images into one "
                           "fold:\n  " + "\n  ".join(lines))


def scan(path: str | Path) -> Scan:
    """Scan a C-NMC dataset folder into records.

    Args:
        path: the ``C-NMC_Leukemia`` folder or its parent.

    Returns:
        A :class:`Scan` with training then validation records, in a stable order.

    Raises:
        DatasetError: the layout, a file name or the labels CSV is wrong (message names the file).
    """
    layout = find_layout(path)
    records = _scan_training(layout)
    check_patient_folds(records)
    val, missing = _scan_validation(layout)
    notes = []
    if missing:
        notes.append(f"{len(missing)} of {len(missing) + len(val)} validation images listed in "
                     f"{VALIDATION_CSV} are not on disk (skipped)")
    if layout.validation_images is None:
        notes.append("no labelled validation images (training data only): a search reports its "
                     "cross-validated estimate as its final score")
    notes += layout.ignored
    both = sorted({r.patient_id for r in val} & {r.patient_id for r in records})
    if both:
        notes.append(f"patients in both training and validation (their cells leak into the final "
                     f"score): {both}")
        log.warning(notes[-1])
    for n in notes:
        log.info("%s: %s", layout.root, n)
    return Scan(root=layout.root, records=records + val, missing_validation=missing, notes=notes)
