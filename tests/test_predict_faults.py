"""Tests for ``leukemia predict`` on inputs that are not clean cells: files that cannot be read
(every readable one still scored, every bad one listed, exit 2 or 0 with ``--skip-bad``, the
reasons ingest gives), frames with no cell on them (``no cell found``, no class), grayscale and
16-bit images (converted as ingest converts them, with a note), and the real cells, none of
which may be taken for "no cell".

Real CLI runs of a random-init ``small_cnn`` export at 32 px; the cells are discs on black
450 px frames unless the real C-NMC sample says otherwise. A few seconds in all.

    .venv/bin/python -m pytest -q tests/test_predict_faults.py
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from leukemia.cli import main
from leukemia.dataset import IMAGE_SUFFIXES
from leukemia.imaging import CELL_PIXELS, GRAYSCALE_NOTE, UNREADABLE, no_cell_reason, read_frame
from leukemia.models import create_backbone, export_model, load_model
from leukemia.store import Store, ingest
from leukemia.train import predict_proba, save_model

SIZE = 32
FRAME = 450  # side of a C-NMC frame


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A one-member, TTA-on export (cell crop, 32 px) whose P(ALL) spreads over (0, 1)."""
    import keras

    keras.utils.set_random_seed(0)
    member = create_backbone("small_cnn", image_size=SIZE, dropout=0.0)
    head = member.get_layer("p_all")
    w, b = head.get_weights()
    head.set_weights([w * 200.0, b])
    path = tmp_path_factory.mktemp("model") / "m.keras"
    save_model(export_model([member], crop="cell", window=None, threshold=0.5, tta=True,
                            info={"source": "test"}), path)
    return path


def _cell(path: Path, seed: int, radius: int = 100) -> Path:
    """Write a 450 px frame holding one disc (``radius`` px) of a seed's colour on black."""
    rng = np.random.default_rng(seed)
    img = np.zeros((FRAME, FRAME, 3), np.uint8)
    centre = tuple(int(c) for c in rng.integers(FRAME // 2 - 40, FRAME // 2 + 40, 2))
    cv2.circle(img, centre, radius, tuple(int(c) for c in rng.integers(60, 256, 3)), -1)
    return _write(path, img)


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path
    return path


def _run(capsys, *argv: str) -> tuple[int, list[list[str]], str]:
    """Run ``leukemia predict``: its exit status, stdout rows split at tabs, and stderr."""
    capsys.readouterr()
    rc = main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    return rc, [line.split("\t") for line in out.out.strip().splitlines()], out.err


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture
def mixed(tmp_path) -> dict[str, Path]:
    """A folder of two cells, a truncated PNG, an empty BMP and a text file; and a text file
    named on its own (``named_txt``)."""
    folder = tmp_path / "cells"
    good_a = _cell(folder / "a.png", 1)
    good_b = _cell(folder / "sub" / "b.bmp", 2)
    truncated = folder / "c.png"
    truncated.write_bytes(good_a.read_bytes()[:200])  # the header and a little of the pixels
    empty = folder / "d.bmp"
    empty.write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: a folder's text file is ignored")
    named = tmp_path / "readme.txt"
    named.write_text("not an image: named on the command line, so tried and listed")
    return {"folder": folder, "a": good_a, "b": good_b, "truncated": truncated, "empty": empty,
            "named_txt": named}


# ---------------------------------------------------------------------------------------------
# files that cannot be read


def test_predict_scores_every_readable_image_and_lists_every_bad_one(tmp_path, capsys, model,
                                                                    mixed):
    out = tmp_path / "p.csv"
    rc, rows, err = _run(capsys, model, mixed["folder"], mixed["named_txt"], "--csv", out)

    assert rc == 2
    assert [Path(r[0]) for r in rows] == [mixed["a"], mixed["b"]]
    expected = predict_proba(load_model(str(model)), np.stack(
        [_model_pixels(p) for p in (mixed["a"], mixed["b"])]))
    assert [float(r[1]) for r in rows] == pytest.approx(expected, abs=1e-4)
    assert all(r[2] in ("ALL", "normal") for r in rows)
    for bad in ("truncated", "empty", "named_txt"):
        assert f"error: {mixed[bad]}: {UNREADABLE}\n" in err, bad
    assert "notes.txt" not in err.split("image(s) scored")[-1]  # ignored, not listed as bad
    assert err.rstrip().splitlines()[-1] == (
        "error: 3 of 5 image file(s) cannot be read (listed above; the other 2 were read); "
        "replace them or pass --skip-bad to leave them out")
    header, written = _read_csv(out)
    assert header == ["path", "p_all", "class", "rule"]
    assert [Path(r["path"]) for r in written] == [mixed["a"], mixed["b"]]
    assert [float(r["p_all"]) for r in written] == pytest.approx(expected, abs=1e-6)


def _model_pixels(path: Path) -> np.ndarray:
    """The pixels the model sees for ``path``: its cell crop at 32 px."""
    from leukemia.imaging import decode_image

    return decode_image(str(path), SIZE, "cell")[0]


def test_predict_skip_bad_exits_0_and_still_lists_the_bad_files(tmp_path, capsys, model, mixed):
    rc, rows, err = _run(capsys, model, mixed["folder"], "--skip-bad",
                         "--csv", tmp_path / "p.csv")

    assert rc == 0
    assert len(rows) == 2 and len(_read_csv(tmp_path / "p.csv")[1]) == 2
    for bad in ("truncated", "empty"):
        assert f"skipped: {mixed[bad]}: {UNREADABLE}\n" in err, bad
    assert "skipped 2 of 4 image file(s) that cannot be read (--skip-bad)" in err
    assert "error" not in err


def test_predict_gives_the_reasons_ingest_gives_for_the_same_bad_files(tmp_path, capsys, model,
                                                                       make_tree):
    root = make_tree()
    fold = root / "training_data" / "fold_0" / "all"
    good = sorted(fold.glob("*.bmp"))[0]
    truncated = fold / "UID_10_7_1_all.bmp"
    truncated.write_bytes(good.read_bytes()[:60])
    as_float = fold / "UID_10_8_1_all.tif"
    assert cv2.imwrite(str(as_float), np.full((40, 40, 3), 0.5, np.float32))

    manifest = ingest(root, str(tmp_path / "store"), size=16, workers=1, skip_bad=True,
                      progress=False)
    rc, _, err = _run(capsys, model, truncated, as_float)

    assert rc == 2
    assert sorted(manifest["skipped_bad_files"]) == sorted(
        line.removeprefix("error: ") for line in err.splitlines()
        if line.startswith(f"error: {fold}"))
    assert f"{as_float}: float32 samples: only 8- and 16-bit images are read" in err


# ---------------------------------------------------------------------------------------------
# frames with no cell on them


def test_predict_all_black_6000px_frame_is_no_cell_found_with_no_class(tmp_path, capsys, model):
    black = _write(tmp_path / "black.png", np.zeros((6000, 6000, 3), np.uint8))
    cell = _cell(tmp_path / "cell.png", 3)
    out = tmp_path / "p.csv"
    rc, rows, err = _run(capsys, model, black, cell, "--csv", out)

    assert rc == 0  # a frame with no cell is an answer, not an error
    assert rows[0] == [str(black), "-", "no cell found: no pixel above the black background "
                       "(> 10)"]
    assert rows[1][0] == str(cell) and rows[1][2] in ("ALL", "normal")
    assert "1 image(s) scored" in err
    assert "1 image(s) with no cell found: no P(ALL), no class" in err
    header, written = _read_csv(out)
    assert header == ["path", "p_all", "class", "rule", "note"]
    assert written[0] == {"path": str(black), "p_all": "", "class": "", "rule": "",
                          "note": "no cell found: no pixel above the black background (> 10)"}
    assert written[1]["note"] == "" and float(written[1]["p_all"]) == pytest.approx(
        float(rows[1][1]), abs=1e-4)


def test_predict_random_noise_is_no_cell_found(tmp_path, capsys, model):
    rng = np.random.default_rng(0)
    paths = [_write(tmp_path / f"noise{side}.png", rng.integers(0, 256, (side, side, 3),
                                                                    dtype=np.uint8))
             for side in (100, FRAME, 2000)]
    rc, rows, err = _run(capsys, model, *paths)

    assert rc == 0 and "0 image(s) scored" in err
    for (path, p, reason), expected in zip(rows, paths, strict=True):
        assert Path(path) == expected and p == "-"
        assert reason.startswith("no cell found: the foreground covers 100% of the frame"), path


def test_predict_speck_and_giant_foregrounds_are_no_cell_found(tmp_path, capsys, model):
    lo, hi = CELL_PIXELS
    speck = np.zeros((FRAME, FRAME, 3), np.uint8)
    speck[200:220, 200:220] = 150  # 400 px
    giant = np.zeros((2000, 2000, 3), np.uint8)
    cv2.circle(giant, (1000, 1000), 400, (150, 90, 200), -1)  # ~503,000 px, 13% of the frame
    rc, rows, _ = _run(capsys, model, _write(tmp_path / "speck.png", speck),
                       _write(tmp_path / "giant.png", giant))

    assert rc == 0
    assert rows[0][2] == (f"no cell found: 400 px of foreground, outside {lo:,}-{hi:,} (the "
                          "training cells hold 7,949-50,511 px)")
    assert rows[1][2].startswith("no cell found: 50") and "outside" in rows[1][2]


def test_predict_no_cell_frames_take_no_part_in_the_patient_call(tmp_path, capsys, model):
    cells = [_cell(tmp_path / f"UID_11_{i}_1_all.png", 10 + i) for i in range(3)]
    black = _write(tmp_path / "UID_11_9_1_all.png", np.zeros((FRAME, FRAME, 3), np.uint8))
    out = tmp_path / "patients.csv"
    rc, _, _ = _run(capsys, model, *cells, black, "--patients-csv", out)

    assert rc == 0
    assert _read_csv(out)[1][0]["cells"] == "3"


def test_no_cell_reason_bounds():
    lo, hi = CELL_PIXELS
    frame = np.zeros((FRAME, FRAME, 3), np.uint8)
    assert no_cell_reason(frame) is not None
    for n, ok in ((lo - 1, False), (lo, True), (hi, True), (hi + 1, False)):
        img = np.zeros((1000, 1000, 3), np.uint8)
        img.reshape(-1, 3)[:n, 2] = 11  # n foreground pixels (blue just above the floor)
        assert (no_cell_reason(img) is None) == ok, n
    dim = np.full((FRAME, FRAME, 3), 10, np.uint8)  # at the floor: background
    assert no_cell_reason(dim) is not None and "no pixel above" in no_cell_reason(dim)


# ---------------------------------------------------------------------------------------------
# grayscale and 16-bit: converted as ingest converts them, with a note


def _variants(tree: Path) -> dict[str, Path]:
    """Re-save three training cells of ``tree`` as grayscale, 16-bit colour and 16-bit
    grayscale PNGs (low bytes random, so the conversion has something to drop)."""
    rng = np.random.default_rng(0)
    fold = tree / "training_data" / "fold_0"
    src = sorted(fold.glob("*/*.bmp"))[:3]
    out = {}
    for kind, path in zip(("gray", "rgb16", "gray16"), src):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if kind.startswith("gray") else bgr
        if kind.endswith("16"):
            img = img.astype(np.uint16) * 256 + rng.integers(0, 256, img.shape, dtype=np.uint16)
        out[kind] = _write(path.with_suffix(".png"), img)
        path.unlink()
    return out


def test_read_frame_converts_grayscale_and_16bit_with_a_note(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    deep = np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3) * 300
    for name, img, rgb, notes in (
            ("gray.png", gray, np.repeat(gray[:, :, None], 3, axis=2), [GRAYSCALE_NOTE]),
            ("deep.png", deep, (deep[:, :, ::-1] >> 8).astype(np.uint8),
             [f"16-bit: scaled to 8 bits (value >> 8; its brightest value {deep.max()} became "
              f"{deep.max() >> 8})"])):
        path = _write(tmp_path / name, img)
        frame = read_frame(str(path))
        np.testing.assert_array_equal(frame.rgb, rgb, err_msg=name)
        assert list(frame.notes) == notes
        # the pixels OpenCV's colour read gave (what stores ingested before the notes hold)
        np.testing.assert_array_equal(frame.rgb, cv2.cvtColor(
            cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), err_msg=name)


def test_ingest_and_predict_give_grayscale_and_16bit_images_the_same_pixels(
        tmp_path, capsys, caplog, model, make_tree):
    tree = make_tree(side=FRAME)  # discs of radius 90: cells by the predict rule
    variants = _variants(tree)
    with caplog.at_level(logging.WARNING, logger="leukemia.store"):
        ingest(tree, str(tmp_path / "store"), size=SIZE, crop="cell", workers=1, progress=False)
    conversions = Store(tmp_path / "store").manifest["conversions"]
    for kind, path in variants.items():
        said = f"{path}: {'16-bit' if kind.endswith('16') else 'grayscale'}"
        assert said in caplog.text
        # and kept where a user of the store looks later (`leukemia describe`)
        assert any(note.startswith(said) for note in conversions), (kind, conversions)
    assert len(conversions) == 4  # gray16 carries both notes; the untouched cells none
    sel = Store(tmp_path / "store").load("training")
    ids = list(sel.image_ids)
    stored = np.stack([sel.images[ids.index(p.relative_to(tree).with_suffix("").as_posix())]
                       for p in variants.values()])

    out = tmp_path / "p.csv"
    rc, _, err = _run(capsys, model, *variants.values(), "--csv", out)
    assert rc == 0
    _, written = _read_csv(out)
    # the scores predict gave are the model's on the store's pixels: the same pixels
    expected = predict_proba(load_model(str(model)), stored)
    assert [float(r["p_all"]) for r in written] == pytest.approx(expected, abs=1e-6)
    notes = {Path(r["path"]): r["note"] for r in written}
    assert notes[variants["gray"]] == GRAYSCALE_NOTE
    assert notes[variants["rgb16"]].startswith("16-bit: scaled to 8 bits (value >> 8;")
    assert notes[variants["gray16"]].startswith("16-bit") and GRAYSCALE_NOTE in notes[
        variants["gray16"]]
    assert "note: 2 image(s) grayscale, converted as ingest converts them" in err
    assert "note: 2 image(s) 16-bit, converted as ingest converts them" in err


# ---------------------------------------------------------------------------------------------
# real cells are never taken for "no cell"


def _images(root: Path) -> list[Path]:
    return sorted(p for p in (root / "C-NMC_Leukemia").rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES)


def test_predict_calls_no_real_cell_no_cell_found(tmp_path, capsys, model, real_data):
    files = _images(real_data)
    assert len(files) == 240
    rc, rows, err = _run(capsys, model, real_data / "C-NMC_Leukemia")

    assert rc == 0
    assert [r for r in rows if r[1] == "-"] == []
    assert len(rows) == len(files) and "240 image(s) scored" in err


@pytest.mark.slow  # reads 3,499 PNGs: ~20 s
def test_no_real_dev_cell_is_no_cell_found(dev_data):
    files = _images(dev_data)
    assert len(files) == 3499
    flagged = [(f, r) for f in files if (r := no_cell_reason(read_frame(str(f)).rgb))]
    assert flagged == []
