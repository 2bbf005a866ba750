"""The ``leukemia`` command: build and inspect the image store, train, evaluate, predict.

    leukemia demo-data OUT_DIR
    leukemia ingest DATA_DIR --store STORE [--size 224] [--crop window|cell|none] [--window 320]
    leukemia describe STORE [--json]
    leukemia train --store STORE --out DIR [--set key=value ...]
    leukemia evaluate MODEL --store STORE [--split validation] [--rule R] [--threshold T]
    leukemia predict MODEL IMAGE_OR_DIR... [--csv FILE] [--rule threshold|prior|em]
        [--threshold T] [--neighbours K] [--patient-per-folder] [--patients-csv FILE]
        [--skip-bad]

Run ``leukemia <command> --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from leukemia.evaluate import BatchPrediction

log = logging.getLogger("leukemia")


def _demo_data(args: argparse.Namespace) -> int:
    from leukemia.demo import write_demo_data

    root = write_demo_data(args.out_dir, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote synthetic demo data (not real cells) to {root}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from leukemia.store import describe, ingest

    manifest = ingest(args.data_dir, args.store, size=args.size, workers=args.workers,
                      crop="none" if args.no_crop else args.crop, window=args.window,
                      skip_bad=args.skip_bad, overwrite=args.overwrite, progress=not args.quiet)
    print(describe(manifest))
    rate = manifest["n_images"] / max(manifest["ingest_seconds"], 1e-9)
    print(f"ingested in {manifest['ingest_seconds']:.1f} s ({rate:,.0f} images/s) -> {args.store}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    from leukemia.store import Store, describe

    manifest = Store(args.store).manifest
    print(json.dumps(manifest, indent=2) if args.json else describe(manifest))
    return 0


def _train(args: argparse.Namespace) -> int:
    from leukemia.config import TrainConfig
    from leukemia.train import train_and_save

    config = TrainConfig().override(args.set or [])
    result = train_and_save(config, args.store, args.out)
    print(json.dumps(result.metrics, indent=2))
    print(f"status: {result.status}; wrote {args.out}/model.keras, config.json, history.csv, "
          "metrics.json")
    return 0 if result.status == "ok" else 1


def _evaluate(args: argparse.Namespace) -> int:
    from leukemia.evaluate import evaluate_model

    metrics = evaluate_model(args.model, args.store, split=args.split, folds=args.folds,
                             out=args.out, threshold=args.threshold, rule=args.rule)
    print(json.dumps(metrics, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from leukemia.evaluate import (
        PATIENT_CALL_SHARE,
        image_files,
        model_rule,
        patient_of,
        patient_summary,
        predict_batch,
    )
    from leukemia.files import atomic_write
    from leukemia.models import load_model

    if args.patients_csv and not any(patient_of(f, per_folder=args.patient_per_folder)
                                     for f in image_files(args.inputs)):
        raise ValueError(f"--patients-csv {args.patients_csv}: no input names a patient; name "
                         "files UID_<patient>_... or give --patient-per-folder")
    model = load_model(args.model)
    rule = model_rule(model, args.rule, args.threshold)
    batch = predict_batch(model, args.inputs, rule, neighbours=args.neighbours,
                          crop="none" if args.no_crop else args.crop, adapt_bn=args.adapt_bn)
    d, corrected = batch.decision, batch.p_neighbours
    for path, p, cls, q, note in _rows(batch):
        if p is None:  # no cell: no score, no class; the reason in the class's place
            print(f"{path}\t-\t{note}" + ("" if corrected is None else "\t-"))
        else:
            print(f"{path}\t{p:.4f}\t{cls}" + ("" if q is None else f"\t{q:.4f}"))
    if args.csv:
        atomic_write(args.csv, _predictions_csv(batch))
    patients = patient_summary(batch.paths, batch.p_all, d.classes,
                               per_folder=args.patient_per_folder)
    if patients:
        print(f"\nper-patient call (ALL where >= {PATIENT_CALL_SHARE:.0%} of the patient's cells "
              f"are called ALL; cells: {d.note}):\npatient\tcells\tmean P(ALL)\t"
              "share called ALL\tpatient call", file=sys.stderr)
        for r in patients:
            print(f"{r['patient_id']}\t{r['cells']}\t{r['mean_p_all']:.4f}\t"
                  f"{r['share_all']:.3f}\t{r['call']}", file=sys.stderr)
    if args.patients_csv:
        atomic_write(args.patients_csv, "\n".join(
            ["patient_id,cells,mean_p_all,share_all,call"]
            + [f"{_csv_field(r['patient_id'])},{r['cells']},{r['mean_p_all']:.6f},"
               f"{r['share_all']:.6f},{r['call']}" for r in patients]) + "\n")
    source = ("--rule" if args.rule else "--threshold" if args.threshold is not None
              else "stored in the model")
    corrected_by = "" if corrected is None else (
        f"neighbour-corrected (transductive, K={batch.neighbours}); ")
    if batch.adapted_bn:
        corrected_by = (f"scored with {batch.adapted_bn} BatchNorm layers' statistics "
                        f"re-estimated on these {len(batch.paths)} cells (transductive); "
                        + corrected_by)
    if batch.adapt_note:
        print(f"note: {batch.adapt_note}", file=sys.stderr)
    wrote = [f for f in (args.csv, args.patients_csv) if f]
    print(f"{len(batch.paths)} image(s) scored; {corrected_by}class = ALL where "
          f"{'corrected ' if corrected_by else ''}P(ALL) >= {d.cut:.3f}; decided by rule "
          f"{rule.name} ({source}): {d.note}"
          + (f"; wrote {', '.join(wrote)}" if wrote else ""), file=sys.stderr)
    return _report_unscored(batch, skip_bad=args.skip_bad)


def _report_unscored(batch: BatchPrediction, *, skip_bad: bool) -> int:
    """Say on stderr what was converted, what had no cell and what could not be read; the exit
    status: 2 when a file could not be read (0 with ``--skip-bad``), as ``ingest`` does."""
    by_kind: dict[str, list[tuple[Path, str]]] = {}
    for path, notes in batch.notes.items():
        for note in notes:
            by_kind.setdefault(note.split(":")[0], []).append((path, note))
    for kind, named in by_kind.items():
        print(f"note: {len(named)} image(s) {kind}, converted as ingest converts them (each "
              f"named in the --csv note column), e.g. {named[0][0]}: {named[0][1]}",
              file=sys.stderr)
    if batch.no_cell:
        print(f"{len(batch.no_cell)} image(s) with no cell found: no P(ALL), no class (the "
              "reason in their rows)", file=sys.stderr)
    if not batch.unreadable:
        return 0
    n, total = len(batch.unreadable), len(batch.files)
    for u in batch.unreadable:
        print(f"{'skipped' if skip_bad else 'error'}: {u.path}: {u.reason}", file=sys.stderr)
    if skip_bad:
        print(f"skipped {n} of {total} image file(s) that cannot be read (--skip-bad)",
              file=sys.stderr)
        return 0
    print(f"error: {n} of {total} image file(s) cannot be read (listed above; the other "
          f"{total - n} were read); replace them or pass --skip-bad to leave them out",
          file=sys.stderr)
    return 2


def _rows(batch: BatchPrediction) -> list[tuple[str, float | None, str, float | None, str]]:
    """One row per readable input, in input order: ``(path, P(ALL), class, neighbour-corrected
    P(ALL), note)``; a frame with no cell has no P(ALL) and no class, and its note says why."""
    d, corrected = batch.decision, batch.p_neighbours
    at = {path: i for i, path in enumerate(batch.paths)}
    no_cell = {u.path: u.reason for u in batch.no_cell}
    rows: list[tuple[str, float | None, str, float | None, str]] = []
    for path in batch.files:
        if path in at:
            i = at[path]
            rows.append((str(path), float(batch.p_all[i]), "ALL" if d.classes[i] else "normal",
                         None if corrected is None else float(corrected[i]),
                         "; ".join(batch.notes.get(path, ()))))
        elif path in no_cell:
            rows.append((str(path), None, "", None, no_cell[path]))
    return rows


def _predictions_csv(batch: BatchPrediction) -> str:
    """The CSV of a prediction: path,p_all,class,rule[,p_all_neighbours][,note], one row per
    readable input. ``note`` is there when some input has one: why a frame with no cell has
    empty p_all, class and rule, or how an image was converted (grayscale, 16-bit)."""
    rows = _rows(batch)
    neighbours, notes = batch.p_neighbours is not None, any(r[4] for r in rows)
    lines = ["path,p_all,class,rule" + (",p_all_neighbours" if neighbours else "")
             + (",note" if notes else "")]
    for path, p, cls, q, note in rows:
        lines.append(f"{_csv_field(path)},{'' if p is None else f'{p:.6f}'},{cls},"
                     f"{'' if p is None else batch.decision.rule}"
                     + ("" if not neighbours else f",{'' if q is None else f'{q:.6f}'}")
                     + ("" if not notes else f",{_csv_field(note)}"))
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``leukemia`` command."""
    from leukemia.imaging import CROPS, DEFAULT_CROP, DEFAULT_SIZE, DEFAULT_WINDOW
    from leukemia.rules import RULES

    p = argparse.ArgumentParser(prog="leukemia", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo-data", help="write a small synthetic dataset in the C-NMC layout")
    s.add_argument("out_dir")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_demo_data)

    s = sub.add_parser("ingest", help="build the Parquet image store from a C-NMC folder")
    s.add_argument("data_dir", help="C-NMC_Leukemia folder or its parent")
    s.add_argument("--store", required=True, help="destination folder or URI (s3://, gs://)")
    s.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"stored image side in px ({DEFAULT_SIZE})")
    s.add_argument("--workers", type=int, default=None, help="decoding processes (all cores)")
    s.add_argument("--crop", choices=list(CROPS), default=DEFAULT_CROP,
                   help="window: a --window px square of the frame centred on the cell, so "
                   "cells keep their size; cell: the cell's bounding square (every cell fills "
                   "the image); none: the whole frame (default: %(default)s)")
    s.add_argument("--window", type=int, default=None,
                   help=f"side of the window crop in px of the original frame ({DEFAULT_WINDOW})")
    s.add_argument("--no-crop", action="store_true", help="same as --crop none")
    s.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (listed in the manifest) instead of failing")
    s.add_argument("--no-overwrite", dest="overwrite", action="store_false",
                   help="fail if the store exists (default: replace it atomically)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=_ingest)

    s = sub.add_parser("describe", help="print a store's counts")
    s.add_argument("store")
    s.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    s.set_defaults(func=_describe)

    s = sub.add_parser("train", help="train one configuration on the store's training folds")
    s.add_argument("--store", required=True)
    s.add_argument("--out", required=True, help="folder for model.keras, config.json, ...")
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides")
    s.set_defaults(func=_train)

    s = sub.add_parser("evaluate", help="score a saved model on a store selection")
    s.add_argument("model", help="a .keras file")
    s.add_argument("--store", required=True)
    s.add_argument("--split", default="validation", choices=["validation", "training"])
    s.add_argument("--folds", type=int, nargs="*", default=None, help="training folds")
    s.add_argument("--out", default=None,
                   help="metrics JSON path (default: metrics-<split>.json beside the model)")
    s.add_argument("--rule", choices=RULES, default=None,
                   help="decision rule over the whole selection, keeping the parameters stored "
                   "in the model (default: the stored rule)")
    s.add_argument("--threshold", type=float, default=None,
                   help="the rule's threshold (alone: the threshold rule at T; default: the one "
                   "stored in the model)")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("predict", help="probability of ALL for image files")
    s.add_argument("model", help="a .keras file")
    s.add_argument("inputs", nargs="+", help="image files or folders")
    s.add_argument("--rule", choices=RULES, default=None,
                   help="decision rule over all the images of this command, keeping the "
                   "parameters stored in the model: threshold (per cell), prior (the training "
                   "share of ALL cells called ALL) or em (prior re-estimated by EM); the "
                   "transductive ones fall back to the threshold on a small batch (default: the "
                   "rule stored in the model)")
    s.add_argument("--threshold", type=float, default=None,
                   help="P(ALL) at or above which a cell is called ALL: the threshold rule at T "
                   "(with --rule prior|em: their fallback) (default: stored in the model, chosen "
                   "on held-out patients; 0.5 if it has none)")
    s.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="neighbour correction (transductive, Pan et al. 2019): blend each "
                   "cell's P(ALL) with the mean of its K nearest cells in the model's features, "
                   "and decide classes on that (a p_all_neighbours column; default 0: off)")
    s.add_argument("--adapt-bn", action="store_true",
                   help="score with the model's BatchNorm statistics re-estimated on all the "
                   "cells of this command pooled (AdaBN, transductive: give many cells of many "
                   "patients, never one patient's; at least 100 cells, else the model's own)")
    s.add_argument("--csv", help="also write path,p_all,class,rule rows to this CSV file (a "
                   "note column when some image has no cell on it, its p_all and class empty, "
                   "or was converted from grayscale or 16 bits)")
    s.add_argument("--patient-per-folder", action="store_true",
                   help="each image's folder name is its patient id (default: UID_<patient>_ "
                   "file names)")
    s.add_argument("--patients-csv", metavar="FILE",
                   help="write the per-patient call (patient_id,cells,mean_p_all,share_all,call)")
    s.add_argument("--crop", choices=["window", "cell", "none"], default=None,
                   help="override the crop stored in the model (models saved before crops were "
                   "stored: the crop of the store they were trained on)")
    s.add_argument("--no-crop", action="store_true", help="same as --crop none")
    s.add_argument("--skip-bad", action="store_true",
                   help="exit 0 when some image files cannot be read (they are listed at the "
                   "end either way, and the other images predicted; default: exit 2)")
    s.set_defaults(func=_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leukemia`` console command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from leukemia.dataset import DatasetError
    from leukemia.store import StoreError

    try:
        return int(args.func(args))
    except (DatasetError, StoreError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
