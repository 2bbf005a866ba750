"""A table of real learning curves: every configuration of a small grid, trained once to the end.

Like the HPOBench / NAS-Bench tables: a discretised search space (backbone x learning rate x
augmentation x class weights x dropout, 72 configurations), each trained once for ``--epochs``
epochs with ``leukemia.train.fit`` on the real C-NMC dev set (official fold_1, 3,499 cells of 14
patients) at ``--image-size`` px, scored after every epoch on whole held-out patients. One row
per (configuration, epoch): held-out weighted F1, ROC AUC, log loss, sensitivity, specificity,
training seconds and the epoch's wall seconds (training + scoring; epoch 1 also pays model build
and graph tracing), plus the configuration's full ``TrainConfig`` as JSON.
``benchmarks/searchers.py`` replays the table through real Ray Tune searches.

The split is fixed, by patient: held out are the normal patient H14 and the ALL patients 34, 44,
2 and 16 (993 cells: 621 ALL, 372 normal); the other 9 patients train, on a fixed random half of
each one's cells (1,252 of 2,506; ``--train-fraction``) so the table fits 2 shared CPU cores.
Configurations run in a fixed shuffled order (seed 0), so a table cut short is still a uniform
sample of the grid. After each configuration the whole table is rewritten atomically
(``benchmarks/data/curves.csv.gz``), so a run that is stopped resumes at the next configuration.

    nice -n 19 python benchmarks/curves.py                # the stored table (time: PERFORMANCE.md)
    python benchmarks/curves.py --limit 2 --epochs 2 --out /tmp/c.csv.gz   # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO

DEV_DATA = Path(os.environ.get("CNMC_DEV_DATA", REPO.parent / "shared" / "data" / "cnmc-dev"))
TABLE = REPO / "benchmarks" / "data" / "curves.csv.gz"
HELD_OUT = ("H14", "34", "44", "2", "16")  # 1 of the 3 normal patients + 4 ALL patients
GRID: dict[str, tuple[Any, ...]] = {
    "backbone": ("small_cnn", "mobilenet_v3_small", "unet"),
    "learning_rate": (3e-4, 1e-3, 3e-3),
    "augment": (False, True),
    "class_weight": ("none", "balanced"),
    "dropout": (0.0, 0.3),
}
METRICS = ("val_weighted_f1", "val_roc_auc", "val_loss", "val_sensitivity", "val_specificity",
           "loss", "train_seconds", "wall_seconds")
COLUMNS = ("config_id", *GRID, "epoch", *METRICS, "status", "train_cells", "val_cells",
           "train_config")


def grid() -> list[dict[str, Any]]:
    """Every configuration of :data:`GRID`, in a fixed order (``config_id`` = index)."""
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def run_order(n: int, seed: int = 0) -> list[int]:
    """Config ids in the order they are generated: a fixed shuffle."""
    ids = list(range(n))
    random.Random(seed).shuffle(ids)
    return ids


def read_table(path: str | Path) -> list[dict[str, str]]:
    """The rows of a curves table (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def write_table(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the rows as gzipped CSV, whole or not at all (mtime 0: same rows, same bytes)."""
    from leukemia.files import atomic_write

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, gzip.compress(buf.getvalue().encode(), mtime=0))


def dev_store(data: Path, size: int, store: Path) -> str:
    """The dev set as a Parquet store at ``size`` px, ingested once into ``store``."""
    from leukemia.store import MANIFEST, ingest

    if not (store / MANIFEST).exists():
        print(f"ingesting {data} into {store} at {size} px", file=sys.stderr)
        ingest(data, str(store), size=size, workers=2)
    return str(store)


def split(store: str, fraction: float = 1.0) -> tuple[Any, Any]:
    """(train, held-out) selections of the dev store, by patient (:data:`HELD_OUT`); the
    training side keeps ``fraction`` of each patient's cells (a fixed random subset)."""
    import numpy as np

    from leukemia.store import Store

    data = Store(store).load("training")
    missing = sorted(set(HELD_OUT) - set(data.patient_ids.tolist()))
    if missing:
        raise ValueError(f"{store}: no cells of held-out patient(s) {missing}; expected the "
                         "C-NMC dev set (official fold_1)")
    held = np.isin(data.patient_ids, HELD_OUT)
    train = data.subset(~held)
    rng = np.random.default_rng(0)
    keep = np.zeros(len(train), bool)
    for patient in sorted(set(train.patient_ids.tolist())):
        idx = np.flatnonzero(train.patient_ids == patient)
        keep[rng.permutation(idx)[:round(len(idx) * fraction)]] = True
    return train.subset(keep), data.subset(held)


def train_one(params: dict[str, Any], base: Any, data: tuple[Any, Any],
              threads: int) -> list[dict[str, Any]]:
    """Train one configuration; one row per epoch."""
    from leukemia.train import fit

    config = base.override(params)
    rows: list[dict[str, Any]] = []
    last = [time.monotonic()]

    def record(epoch: int, m: dict[str, Any], _model: Any) -> None:
        now = time.monotonic()
        rows.append({"epoch": epoch, **{k: m.get(k, "") for k in METRICS},
                     "wall_seconds": round(now - last[0], 3), "status": "ok"})
        last[0] = now

    result = fit(config, data, [record], threads=threads)
    if result.status != "ok":  # the NaN epoch is not passed to callbacks: keep it as a row
        bad = result.history[-1]
        rows.append({"epoch": bad["epoch"], "loss": bad.get("loss"), "status": result.status,
                     "train_seconds": bad.get("train_seconds"),
                     "wall_seconds": round(time.monotonic() - last[0], 3)})
    cells = {"train_cells": len(data[0]), "val_cells": len(data[1])}
    conf = json.dumps(config.to_dict(), separators=(",", ":"))
    return [{**params, **r, **cells, "train_config": conf} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEV_DATA), help="the cnmc-dev folder")
    p.add_argument("--store", default=None,
                   help="cached store (default: $CNMC_CACHE/stores/cnmc-dev-<size>px)")
    p.add_argument("--out", default=str(TABLE))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of each training patient's cells used (CPU budget)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new configs")
    args = p.parse_args()

    from leukemia.config import TrainConfig
    from search.cache import cache_root

    store = Path(args.store or cache_root() / "stores" / f"cnmc-dev-{args.image_size}px")
    data = split(dev_store(Path(args.data), args.image_size, store), args.train_fraction)
    base = TrainConfig(image_size=args.image_size, epochs=args.epochs, val_fold=None)
    configs = grid()
    rows = read_table(args.out)
    done = {int(r["config_id"]) for r in rows}
    todo = [i for i in run_order(len(configs)) if i not in done][:args.limit]
    print(f"{len(done)} of {len(configs)} configurations in {args.out}; {len(todo)} to train "
          f"({len(data[0])} training, {len(data[1])} held-out cells)", file=sys.stderr)
    t0 = time.monotonic()
    for n, cid in enumerate(todo, 1):
        t = time.monotonic()
        new = [{"config_id": cid, **r} for r in train_one(configs[cid], base, data, args.threads)]
        rows += new
        rows.sort(key=lambda r: (int(r["config_id"]), int(r["epoch"])))
        write_table(args.out, rows)
        best = max((float(r["val_weighted_f1"]) for r in new if r["val_weighted_f1"] != ""),
                   default=float("nan"))
        print(f"[{time.monotonic() - t0:7.0f} s] {n}/{len(todo)} config {cid} "
              f"{json.dumps(configs[cid])}: {len(new)} epochs in {time.monotonic() - t:.0f} s, "
              f"best held-out wF1 {best:.4f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
