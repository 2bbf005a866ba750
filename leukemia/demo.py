"""Write a small synthetic dataset in the exact C-NMC 2019 folder layout.

The images are drawn, not photographed: one segmented "cell" per ``frame x frame`` 24-bit BMP on a
pure black background, with a violet nucleus inside a lavender cytoplasm. Blasts (ALL, label 1) and
normal cells (hem, label 0) are drawn from overlapping distributions, so a classifier can learn
them but not perfectly:

- nucleus-to-cell radius ratio: larger for blasts;
- nucleus outline: round for blasts, lobed or indented for normal cells;
- chromatin: fine and pale for blasts (often with nucleoli), coarse and dark for normal cells;
- cell radius: slightly larger for blasts.

A per-patient stain shift (colour and brightness, shared by all of a patient's cells) and a small
per-patient shift of the nucleus ratio make patient identity a nuisance factor, as in the real
data, where patient-split scores are lower than image-split ones. Everything is deterministic given
``seed``. It exists so that the pipeline, the search and the tests run without the real data
(``scan()`` reads it like the real thing); it says nothing about real cells.

Run it::

    python -m leukemia.demo OUT_DIR [--seed 0] [--frame 450] [--overwrite]

or from Python: ``write_demo_data(out_dir)``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from leukemia.dataset import (
    CSV_COLUMNS,
    ROOT_NAME,
    VALIDATION_CSV,
    VALIDATION_DIR,
    VALIDATION_IMAGES,
)

log = logging.getLogger(__name__)

_REF_FRAME = 450  # geometry below is in pixels of the real 450 x 450 frame, scaled to `frame`
_CYTO_BGR = np.array([205.0, 158.0, 178.0], np.float32)  # lavender cytoplasm
_NUC_BGR = np.array([150.0, 62.0, 112.0], np.float32)  # violet nucleus
_ALL_IMAGE_FACTOR = 2  # ALL patients get twice the images: ALL:hem about 2:1 like C-NMC


@dataclass(frozen=True)
class _Patient:
    """A synthetic patient: id, class and the stain shift shared by all of their cells."""

    pid: str
    label: int  # 1 = ALL, 0 = hem
    colour_shift: np.ndarray  # BGR offset added to every cell of this patient
    brightness: float  # multiplier on every cell of this patient
    ratio_shift: float  # patient-level shift of the nucleus ratio


def _new_patient(rng: np.random.Generator, pid: str, label: int) -> _Patient:
    """Draw one patient's nuisance stain parameters."""
    hue = rng.normal(0.0, 1.0)  # one axis pinker <-> bluer, plus small independent noise
    shift = np.array([12.0 * hue, 0.0, -12.0 * hue], np.float32) + rng.normal(0, 6, 3)
    return _Patient(pid, label, shift.astype(np.float32), float(rng.normal(1.0, 0.08)),
                    float(rng.normal(0.0, 0.03)))


def _noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth unit-variance noise with features about ``scale`` pixels wide."""
    scale = max(scale, 1.0)
    small = rng.standard_normal((int(h / scale) + 2, int(w / scale) + 2)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC if scale > 1 else
                     cv2.INTER_NEAREST)
    return big / max(float(big.std()), 1e-6)


def _outline(rng: np.random.Generator, radius: float, elong: float, amps: list[float],
             notch: float = 0.0, n: int = 120) -> np.ndarray:
    """Points (n, 2) of a closed blob centred on 0.

    A rotated ellipse with harmonic wobbles (``amps`` for harmonics 2, 3, ...) and an optional
    indentation ``notch`` deep (a fraction of the radius), like a cleaved nucleus.
    """
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k, a in enumerate(amps, start=2):
        r += a * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    if notch > 0:
        gap = np.angle(np.exp(1j * (t - rng.uniform(0, 2 * np.pi))))  # wrapped to [-pi, pi]
        r -= notch * np.exp(-0.5 * (gap / rng.uniform(0.15, 0.3)) ** 2)
    x, y = radius * r * np.cos(t), radius * elong * r * np.sin(t)
    ang = rng.uniform(0, np.pi)
    c, s = math.cos(ang), math.sin(ang)
    return np.stack([c * x - s * y, s * x + c * y], axis=1)


def _fill(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """A uint8 0/1 mask of the polygon ``pts`` (sub-pixel vertices)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask


def _draw_cell(rng: np.random.Generator, patient: _Patient, frame: int) -> np.ndarray:
    """Draw one segmented cell of ``patient``'s class on black: (frame, frame, 3) uint8 BGR."""
    s = frame / _REF_FRAME
    blast = patient.label == 1
    # Class cues, each drawn from overlapping distributions.
    radius = float(np.clip(rng.normal(126 if blast else 114, 22), 80, 170)) * s
    ratio = float(np.clip(rng.normal(0.73 if blast else 0.66, 0.07) + patient.ratio_shift,
                          0.45, 0.88))
    lobes = abs(rng.normal(0.025, 0.02)) if blast else abs(rng.normal(0.08, 0.04))
    notch = rng.uniform(0.1, 0.3) * (rng.random() < (0.12 if blast else 0.45))
    grain = (rng.uniform(1.5, 4.0) if blast else rng.uniform(2.8, 7.0)) * s
    texture = rng.normal(0.115, 0.03) if blast else rng.normal(0.155, 0.04)
    darkness = rng.normal(1.0, 0.07) if blast else rng.normal(0.94, 0.07)
    nucleoli = int(rng.random() < (0.55 if blast else 0.2)) * int(rng.integers(1, 3))

    cell = _outline(rng, radius, rng.uniform(0.82, 1.0), list(rng.uniform(0, 0.035, 4)))
    nuc_amps = [lobes * w for w in rng.dirichlet([1.0, 1.0, 1.0]) * 1.6]
    nuc = _outline(rng, radius * ratio, rng.uniform(0.78, 1.0), nuc_amps, notch)
    drift, heading = rng.uniform(0, 0.6) * (1 - ratio) * radius, rng.uniform(0, 2 * np.pi)
    nuc += drift * np.array([math.cos(heading), math.sin(heading)])

    # Place the cell near the middle; keep it inside the frame.
    lo, hi = cell.min(axis=0), cell.max(axis=0)
    half = (hi - lo) / 2
    room = np.maximum(frame / 2 - half - 2, 0)
    centre = frame / 2 - (lo + hi) / 2 + np.clip(rng.normal(0, 0.04 * frame, 2), -room, room)
    x0, y0 = (np.floor(lo + centre).astype(int) - 2).clip(0, frame - 1)
    x1, y1 = (np.ceil(hi + centre).astype(int) + 3).clip(1, frame)
    h, w = y1 - y0, x1 - x0
    origin = np.array([x0, y0], np.float64)
    cell_mask = _fill((h, w), cell + centre - origin)
    nuc_mask = _fill((h, w), nuc + centre - origin)
    k = max(3, int(0.06 * radius) | 1)
    nuc_mask &= cv2.erode(cell_mask, np.ones((k, k), np.uint8))

    jitter = rng.normal(0, 4, 3).astype(np.float32)
    cyto_col = (_CYTO_BGR + patient.colour_shift + jitter) * patient.brightness
    nuc_col = (_NUC_BGR + 0.6 * patient.colour_shift + jitter) * patient.brightness * darkness
    cyto_tex = 1 + 0.05 * _noise(rng, h, w, 0.3 * radius) + 0.03 * _noise(rng, h, w, 2 * s)
    chromatin = 0.8 * _noise(rng, h, w, grain) + 0.45 * _noise(rng, h, w, 2.5 * grain)
    nuc_tex = 1 - texture * chromatin - 0.3 * texture * np.maximum(chromatin, 0)
    if nucleoli:
        spots = np.zeros((h, w), np.float32)
        ys, xs = np.nonzero(nuc_mask)
        for i in rng.integers(0, len(ys), nucleoli) if len(ys) else []:
            r_spot = max(1.0, rng.uniform(0.07, 0.12) * radius * ratio)
            cv2.circle(spots, (int(xs[i]), int(ys[i])), int(round(r_spot)), 1.0, -1)
        spots = cv2.GaussianBlur(spots, (0, 0), max(0.5, 1.5 * s))
        nuc_tex = nuc_tex + 0.3 * spots
    alpha = cv2.GaussianBlur(nuc_mask.astype(np.float32), (0, 0), max(0.4, 1.5 * s))[..., None]
    img = (cyto_col * cyto_tex[..., None]) * (1 - alpha) + (nuc_col * nuc_tex[..., None]) * alpha
    # Real C-NMC cells are segmented onto exact zeros; keep the cell itself off zero.
    patch = np.clip(img, 8, 255).astype(np.uint8) * cell_mask[..., None]
    out = np.zeros((frame, frame, 3), np.uint8)
    out[y0:y1, x0:x1] = patch
    return out


def _check_args(**counts: int) -> None:
    """Raise ValueError naming any count argument that is out of range."""
    for name, value in counts.items():
        least = 0 if name.startswith("validation") else (32 if name == "frame" else 1)
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r}: must be an integer >= {least}")


def _readme(counts: dict[str, int], seed: int, frame: int) -> str:
    """The README.txt text placed beside the synthetic C-NMC_Leukemia folder."""
    return (
        "SYNTHETIC DEMO DATA - NOT REAL CELLS\n\n"
        f"{ROOT_NAME}/ here was drawn by leukemia.demo.write_demo_data(seed={seed}, "
        f"frame={frame}).\n"
        "It copies the C-NMC 2019 folder layout and file naming so that the pipeline runs\n"
        "without the real data, but every image is a procedurally drawn blob: a violet\n"
        "'nucleus' inside a lavender 'cytoplasm' on black. 'ALL' (label 1) cells tend to have\n"
        "a larger, rounder nucleus with finer chromatin; 'hem' (label 0) cells a smaller, lobed\n"
        "nucleus with coarser chromatin; the distributions overlap, and each patient has its\n"
        "own stain shift.\n"
        "Scores measured on it say nothing about leukemia or about real microscope images.\n\n"
        + "".join(f"{k}: {v}\n" for k, v in counts.items())
    )


def write_demo_data(
    out_dir: str | Path,
    *,
    folds: int = 3,
    patients_per_class: int = 3,
    images_per_patient: int = 10,
    validation_patients_per_class: int = 3,
    validation_images_per_patient: int = 8,
    frame: int = 450,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the C-NMC 2019 layout and return its ``C-NMC_Leukemia`` root.

    Writes ``out_dir/C-NMC_Leukemia/training_data/fold_<k>/{all,hem}/UID_<patient>_<image>_<cell>_
    <all|hem>.bmp``, ``validation_data/`` (``<N>.bmp`` in shuffled class order plus the labels CSV
    with CRLF line ends, as in the real release) and ``out_dir/README.txt``. ALL patients are
    numbered ``1, 2, ...`` and normal ones ``H1, H2, ...``; each patient sits in one fold and the
    validation patients are new ones. The tree is built in a hidden folder next to the root and
    renamed into place, so a crash leaves no half-written ``C-NMC_Leukemia``.

    Args:
        out_dir: folder to write into (created if missing).
        folds: number of training folds.
        patients_per_class: ALL patients and normal patients in *each* fold.
        images_per_patient: images per normal patient; ALL patients get twice as many, giving the
            real data's ALL:hem ratio of about 2:1.
        validation_patients_per_class: ALL and normal patients in ``validation_data`` (0: none).
        validation_images_per_patient: as ``images_per_patient``, for validation patients.
        frame: image side in pixels (the real images are 450); geometry scales with it.
        seed: seed of all randomness; the same seed writes byte-identical files.
        progress: called as ``progress(done, total)`` after each image is written.
        overwrite: replace an existing non-empty ``out_dir/C-NMC_Leukemia``.

    Returns:
        The path of ``out_dir/C-NMC_Leukemia``, ready for :func:`leukemia.dataset.scan`.

    Raises:
        FileExistsError: ``out_dir/C-NMC_Leukemia`` exists, is not empty and ``overwrite`` is
            false.
        ValueError: a count or ``frame`` is out of range.
    """
    _check_args(folds=folds, patients_per_class=patients_per_class,
                images_per_patient=images_per_patient,
                validation_patients_per_class=validation_patients_per_class,
                validation_images_per_patient=validation_images_per_patient, frame=frame)
    out_dir = Path(out_dir).expanduser()
    root = out_dir / ROOT_NAME
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise FileExistsError(f"{root} already exists and is not empty; choose another folder or "
                              "pass overwrite=True to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_ids = {1: 0, 0: 0}

    def patient(label: int) -> _Patient:
        n_ids[label] += 1
        return _new_patient(rng, f"{'' if label else 'H'}{n_ids[label]}", label)

    # (fold or None, patient, images): every patient in exactly one fold or in validation.
    def count(label: int, per_patient: int) -> int:
        return per_patient * (_ALL_IMAGE_FACTOR if label else 1)

    plan: list[tuple[int | None, _Patient, int]]
    plan = [(f, patient(lab), count(lab, images_per_patient))
            for f in range(folds) for lab in (1, 0) for _ in range(patients_per_class)]
    plan += [(None, patient(lab), count(lab, validation_images_per_patient))
             for lab in (1, 0) for _ in range(validation_patients_per_class)]
    total = sum(n for _, _, n in plan)
    n_val = sum(n for f, _, n in plan if f is None)
    val_numbers = iter(rng.permutation(n_val) + 1)

    tmp = Path(tempfile.mkdtemp(prefix=f".{ROOT_NAME}.partial-", dir=out_dir))
    try:
        rows: list[tuple[int, str, int]] = []
        done = 0
        for fold, p, n_images in plan:
            cls = "all" if p.label else "hem"
            if fold is None:
                folder = tmp / VALIDATION_DIR / VALIDATION_IMAGES
            else:
                folder = tmp / "training_data" / f"fold_{fold}" / cls
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n_images):
                uid = f"UID_{p.pid}_{j // 2 + 1}_{j % 2 + 1}_{cls}.bmp"
                name = uid
                if fold is None:
                    number = int(next(val_numbers))
                    name = f"{number}.bmp"
                    rows.append((number, uid, p.label))
                if not cv2.imwrite(str(folder / name), _draw_cell(rng, p, frame)):
                    raise OSError(f"{folder / name}: cv2.imwrite failed; is the disk full?")
                done += 1
                if progress is not None:
                    progress(done, total)
        if rows:
            with open(tmp / VALIDATION_DIR / VALIDATION_CSV, "w", newline="",
                      encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\r\n")
                writer.writerow(CSV_COLUMNS)
                writer.writerows((uid, f"{n}.bmp", lab) for n, uid, lab in sorted(rows))
        if root.is_dir() and not root.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{ROOT_NAME}.old-", dir=out_dir))
            root.rename(old / ROOT_NAME)
            shutil.rmtree(old)
        elif root.exists():
            root.unlink()
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = {
        "training images": total - n_val, "validation images": n_val,
        "folds": folds, "patients per class per fold": patients_per_class,
        "validation patients per class": validation_patients_per_class,
    }
    (out_dir / "README.txt").write_text(_readme(counts, seed, frame), encoding="utf-8")
    log.info("wrote %d synthetic images (%d validation) to %s", total, n_val, root)
    return root


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m leukemia.demo OUT_DIR [--seed N] [--frame F] [--overwrite]``."""
    ap = argparse.ArgumentParser(description="Write synthetic C-NMC-layout demo data.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frame", type=int, default=450, help="image side in pixels")
    ap.add_argument("--patients-per-class", type=int, default=3, help="per fold")
    ap.add_argument("--images-per-patient", type=int, default=10)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    root = write_demo_data(args.out_dir, seed=args.seed, frame=args.frame,
                           patients_per_class=args.patients_per_class,
                           images_per_patient=args.images_per_patient, overwrite=args.overwrite)
    print(root)


if __name__ == "__main__":
    main()
