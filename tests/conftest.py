"""Shared fixtures: the real C-NMC sample, a store built from it, and tiny generated C-NMC trees.

The real sample (240 C-NMC 2019 images, see ``../shared/data/cnmc-real/SOURCES.md``) is never
copied into the repository: tests reach it through ``real_data`` (``CNMC_REAL_DATA`` overrides
its location) and skip with a reason where it is absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REAL_STORE_SIZE = 64  # small enough that ingesting the 240 real images takes ~2 s


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder holding the real sample's ``C-NMC_Leukemia/`` and ``MANIFEST.csv``."""
    env = os.environ.get("CNMC_REAL_DATA")
    path = Path(env).expanduser() if env else REPO.parent / "shared" / "data" / "cnmc-real"
    if not (path / "C-NMC_Leukemia").is_dir():
        pytest.skip(f"real C-NMC sample not found at {path} (no C-NMC_Leukemia/ in it); "
                    "set CNMC_REAL_DATA to the folder holding C-NMC_Leukemia/ and MANIFEST.csv")
    return path


@pytest.fixture(scope="session")
def dev_data() -> Path:
    """The dev set's folder (official fold_1 as PNG, training only; holds ``C-NMC_Leukemia/``)."""
    env = os.environ.get("CNMC_DEV_DATA")
    path = Path(env).expanduser() if env else REPO.parent / "shared" / "data" / "cnmc-dev"
    if not (path / "C-NMC_Leukemia").is_dir():
        pytest.skip(f"C-NMC dev set not found at {path} (no C-NMC_Leukemia/ in it); "
                    "set CNMC_DEV_DATA to the folder holding C-NMC_Leukemia/ and MANIFEST.csv")
    return path


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> str:
    """A store ingested once per session from the real sample at 64 px (default crop)."""
    from leukemia.store import ingest

    path = tmp_path_factory.mktemp("real-store") / "store"
    ingest(real_data, str(path), size=REAL_STORE_SIZE, progress=False)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Generated C-NMC trees: small BMPs of a coloured disc on black, in the real layout.


def write_cell(path: Path, seed: int, side: int = 32) -> Path:
    """Write a ``side`` x ``side`` BMP of a disc of a seed-dependent colour and place."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((side, side, 3), np.uint8)
    jitter = max(1, side // 8)
    centre = (side // 2 + int(rng.integers(-jitter, jitter + 1)),
              side // 2 + int(rng.integers(-jitter, jitter + 1)))
    colour = tuple(int(c) for c in rng.integers(60, 256, 3))
    cv2.circle(img, centre, max(2, side // 5), colour, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cv2.imwrite could not write {path}")
    return path


def write_tree(base: Path, *, folds: Iterable[int] = (0, 1), per_class: int = 2,
               validation: int = 2, missing_rows: int = 0, side: int = 32) -> Path:
    """Write a valid C-NMC tree under ``base`` and return its ``C-NMC_Leukemia`` folder.

    Fold ``k`` holds ``per_class`` cells of ALL patient ``1k`` and of normal patient ``H1k``;
    the validation folder holds ``validation`` numbered cells (alternating all/hem, patients
    ``50``/``H50``) and the labels CSV lists ``missing_rows`` more rows whose image is absent.
    """
    root = base / "C-NMC_Leukemia"
    seed = 0
    for k in folds:
        for cls, patient in (("all", f"1{k}"), ("hem", f"H1{k}")):
            for i in range(per_class):
                seed += 1
                write_cell(root / f"training_data/fold_{k}/{cls}/UID_{patient}_{i}_1_{cls}.bmp",
                           seed, side)
    vdir = root / "validation_data"
    rows = ["Patient_ID,new_names,labels"]
    for n in range(1, validation + missing_rows + 1):
        cls, patient, label = ("all", "50", 1) if n % 2 else ("hem", "H50", 0)
        rows.append(f"UID_{patient}_{n}_1_{cls}.bmp,{n}.bmp,{label}")
        if n <= validation:
            seed += 1
            write_cell(vdir / f"C-NMC_test_prelim_phase_data/{n}.bmp", seed, side)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "C-NMC_test_prelim_phase_data_labels.csv").write_text("\r\n".join(rows) + "\r\n")
    return root


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make_tree(name="data", **kw)`` writes :func:`write_tree` under ``tmp_path / name``."""

    def make(name: str = "data", **kw) -> Path:
        return write_tree(tmp_path / name, **kw)

    return make


def write_tcia_tree(base: Path, *, csv_at: str = "inside", package: bool = False,
                    nested: bool = False, final: bool = False, **kw) -> Path:
    """Write :func:`write_tree`'s cells in TCIA's layout under ``base``; return its root.

    ``C-NMC_training_data/fold_<k>/`` holds the training cells and
    ``C-NMC_test_prelim_phase_data/`` the validation ones (one folder deeper if ``nested``), with
    the labels CSV inside that folder or beside it (``csv_at``: ``"inside"``/``"beside"``). The
    root is ``base``, or ``base / "PKG - C-NMC 2019"`` if ``package``; ``final`` adds an
    unlabelled ``C-NMC_test_final_phase_data/``. Same ``kw``, same pixels as ``write_tree``.
    """
    if csv_at not in ("inside", "beside"):
        raise ValueError(f"csv_at={csv_at!r}: expected 'inside' or 'beside'")
    src = write_tree(base.with_name(base.name + ".kaggle-src"), **kw)
    root = base / "PKG - C-NMC 2019" if package else base
    root.mkdir(parents=True, exist_ok=True)
    shutil.move(src / "training_data", root / "C-NMC_training_data")
    prelim = root / "C-NMC_test_prelim_phase_data"
    images = src / "validation_data/C-NMC_test_prelim_phase_data"
    if images.is_dir():
        dest = prelim / prelim.name if nested else prelim
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(images, dest)
        labels = src / "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
        shutil.move(labels, (prelim if csv_at == "inside" else root) / labels.name)
    if final:
        write_cell(root / "C-NMC_test_final_phase_data/1.bmp", seed=999)
    shutil.rmtree(src.parent)
    return root


@pytest.fixture
def make_tcia_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make_tcia_tree(name="tcia", **kw)`` writes :func:`write_tcia_tree` under ``tmp_path``."""

    def make(name: str = "tcia", **kw) -> Path:
        return write_tcia_tree(tmp_path / name, **kw)

    return make


def save_as(path: Path, suffix: str, dest: Path | None = None) -> Path:
    """Re-encode ``path``'s pixels in the format ``suffix`` names (any letter case).

    The copy goes to ``dest`` (default: ``path`` with the new suffix, and ``path`` is deleted).
    """
    import cv2

    ok, buf = cv2.imencode(suffix.lower(), cv2.imread(str(path), cv2.IMREAD_COLOR))
    if not ok:
        raise OSError(f"cv2.imencode could not encode {path} as {suffix}")
    out = dest if dest is not None else path.with_suffix(suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.tobytes())
    if dest is None and out != path:
        path.unlink()
    return out


@pytest.fixture
def reencode() -> Callable[..., Path]:
    """:func:`save_as`: ``reencode(path, ".png", dest=None)``, for tests of image formats."""
    return save_as


@pytest.fixture
def write_bmp() -> Callable[..., Path]:
    """:func:`write_cell`, for tests that add one file to a tree."""
    return write_cell
