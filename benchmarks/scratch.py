"""Which backbones leave a constant prediction from random initialisation, per image size.

A backbone that still calls every held-out cell the same class after a few epochs from random
weights is dead weight in a search from scratch: its trials are stopped as ``constant`` at
ASHA's first rung (``search.searcher.ConstantStopper``) and spend their epochs for nothing.
This trains each of ``search.space.DEFAULT_BACKBONES`` (``weights=none``) at each ``--sizes``
for ``--epochs`` epochs on ``--cells`` real training cells of the dev set (official fold_1,
``../shared/data/cnmc-dev``, env ``CNMC_DEV_DATA``, ingested once into a cached store with the
search's default window crop) and scores ``--held`` cells of patients it never saw (fold_1's
patients are split into 3 groups as in ``benchmarks/quality.py``, one normal patient in each;
the first group is held out, whole patients, never random images). Recipe: the search space's
middle (AdamW, lr 1e-3, weight decay 1e-4, dropout 0.2, augmentation 0.5, balanced class
weights, cosine schedule over ``--schedule-epochs``, the search's default budget, so the first
epochs see the learning rate a search trial sees).

Per backbone and size, per epoch: whether the held-out predictions were constant
(``search.trainable.is_constant``: one class at 0.5 for every cell and AUC within 0.02 of 0.5),
the held-out AUC, the share called ALL and the spread (std) of P(ALL). The baseline is
small_cnn, the search's reference backbone. A closing ``SCRATCH_CONSTANT`` line gives, per
backbone, the largest size at which it stayed constant at its last epoch (the table
``search/space.py`` keeps). Last line: ``ratio: R`` = the share of (backbone, size) runs whose
last epoch was constant.

    python benchmarks/scratch.py                              # 32 and 96 px, 3 epochs, ~600 cells
    python benchmarks/scratch.py --sizes 96 --backbones small_cnn,mobilenet_v3_small
    python benchmarks/scratch.py --heavy-up-to 32             # vgg19, resnet50, ... at 32 px only
    python benchmarks/scratch.py --quick                      # CI: the sample, 32 px, 2, 1 epoch
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_DATA
from quality import DEFAULT_DEV, load_store, patient_groups

HEAVY = ("vgg19", "resnet50", "densenet121", "inception_v3")  # slow on CPU at 96 px
WINDOW = 320  # the search's default crop: a 320 px window of the frame around the cell


def split(cells: Any, n_train: int, n_held: int, seed: int) -> tuple[Any, Any]:
    """Hold out the first of 3 patient groups; subsample both sides (whole patients apart)."""
    groups = patient_groups(cells.labels, cells.patient_ids)
    held = np.isin(cells.patient_ids, groups[0])
    rng = np.random.default_rng(seed)

    def pick(mask: np.ndarray, n: int) -> Any:
        idx = np.flatnonzero(mask)
        return cells.subset(np.sort(rng.choice(idx, min(n, idx.size), replace=False)))

    return pick(~held, n_train), pick(held, n_held)


def train_config(backbone: str, size: int, args: argparse.Namespace) -> Any:
    from leukemia.config import TrainConfig

    return TrainConfig(backbone=backbone, image_size=size, batch_size=args.batch_size,
                       epochs=args.epochs, schedule_epochs=max(args.schedule_epochs, args.epochs),
                       learning_rate=1e-3, optimizer="adamw", weight_decay=1e-4, dropout=0.2,
                       augment=True, augment_strength=0.5, class_weight="balanced",
                       weights="none", val_fold=None, seed=args.seed)


def measure(backbone: str, size: int, train: Any, held: Any, args: argparse.Namespace
            ) -> dict[str, Any]:
    """Train from random init; per epoch: constant?, AUC, share called ALL, std of P(ALL)."""
    from leukemia.train import fit, predict_proba
    from search.trainable import is_constant

    epochs: list[dict[str, Any]] = []

    def per_epoch(epoch: int, row: dict[str, Any], model: Any) -> None:
        p = predict_proba(model, held.images)
        epochs.append({"constant": is_constant(row), "auc": row.get("val_roc_auc"),
                       "called_all": float((p >= 0.5).mean()), "std": float(p.std())})

    t0 = time.monotonic()
    result = fit(train_config(backbone, size, args), (train, held), callbacks=[per_epoch],
                 threads=args.threads)
    return {"backbone": backbone, "size": size, "status": result.status, "epochs": epochs,
            "seconds": time.monotonic() - t0}


def _row(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"| {r['backbone']} | {r['size']} | – | – | – | – | – | {r['skipped']} |"
    last = r["epochs"][-1] if r["epochs"] else {}
    flags = " ".join("C" if e["constant"] else "·" for e in r["epochs"]) or "–"
    auc = last.get("auc")
    return (f"| {r['backbone']} | {r['size']} | {flags} | "
            f"{'**yes**' if last.get('constant') else 'no'} | "
            f"{'–' if auc is None else f'{auc:.3f}'} | {last.get('called_all', 0):.2f} | "
            f"{last.get('std', 0):.4f} | {r['seconds']:.0f} s"
            f"{'' if r['status'] == 'ok' else ', loss not finite'} |")


def main(argv: list[str] | None = None) -> None:
    from search.space import DEFAULT_BACKBONES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", type=Path, default=DEFAULT_DEV,
                   help="the dev set (official fold_1; env CNMC_DEV_DATA)")
    p.add_argument("--sizes", default="32,96", help="comma-separated image sizes in px")
    p.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--schedule-epochs", type=int, default=20,
                   help="the cosine schedule's horizon: the search's default epoch budget (20)")
    p.add_argument("--cells", type=int, default=600, help="training cells")
    p.add_argument("--held", type=int, default=300, help="held-out cells (other patients)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="TensorFlow CPU threads")
    p.add_argument("--heavy-up-to", type=int, default=None,
                   help=f"measure {', '.join(HEAVY)} only at sizes up to this (slow on CPU)")
    p.add_argument("--quick", action="store_true",
                   help="CI: the 240-image sample (env CNMC_REAL_DATA), 32 px, small_cnn and "
                   "mobilenet_v3_small, 1 epoch")
    args = p.parse_args(argv)
    data = args.dev
    if args.quick:
        data, args.sizes, args.epochs = Path(DEFAULT_DATA), "32", 1
        args.backbones, args.cells, args.held = "small_cnn,mobilenet_v3_small", 160, 80
    if not (data / "C-NMC_Leukemia").is_dir():
        raise SystemExit(f"{data}: no C-NMC_Leukemia/ folder; pass --dev (or set CNMC_DEV_DATA; "
                         "CNMC_REAL_DATA for --quick) to the folder holding it")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if "small_cnn" not in names:
        names.insert(0, "small_cnn")  # the baseline
    from leukemia.models import backbone_spec

    print(f"scratch benchmark: {data}; sizes {sizes}, {args.epochs} epochs (cosine over "
          f"{args.schedule_epochs}), batch {args.batch_size}, seed {args.seed}; backbones "
          f"{', '.join(names)}", flush=True)
    runs: list[dict[str, Any]] = []
    for size in sizes:
        store = load_store(data, size, "window", WINDOW)
        cells = store.load("training")
        if not args.quick:
            cells = cells.subset(cells.folds == 1)  # the dev set is official fold_1
        train, held = split(cells, args.cells, args.held, args.seed)
        print(f"{size} px: training on {len(train)} cells of "
              f"{len(set(train.patient_ids.tolist()))} patients ({int(train.labels.sum())} ALL),"
              f" held out {len(held)} cells of patients {sorted(set(held.patient_ids.tolist()))}"
              f" ({int(held.labels.sum())} ALL)", flush=True)
        for name in names:
            spec = backbone_spec(name)
            if size < spec.min_size or size % spec.multiple_of:
                runs.append({"backbone": name, "size": size,
                             "skipped": f"not legal at {size} px"})
            elif args.heavy_up_to is not None and name in HEAVY and size > args.heavy_up_to:
                runs.append({"backbone": name, "size": size,
                             "skipped": f"not measured (--heavy-up-to {args.heavy_up_to})"})
            else:
                runs.append(measure(name, size, train, held, args))
            print(_row(runs[-1]), flush=True)

    measured = [r for r in runs if "skipped" not in r]
    print("\nPer backbone and size (C: constant at that epoch; last: the last epoch's held-out "
          "predictions; std: of P(ALL) over the held-out cells):\n")
    print("| backbone | px | constant by epoch | constant at last | AUC | called ALL | std | "
          "time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(_row(r))
    table: dict[str, int] = {}
    for r in measured:
        if r["epochs"] and r["epochs"][-1]["constant"]:
            table[r["backbone"]] = max(table.get(r["backbone"], 0), r["size"])
    print(f"\nSCRATCH_CONSTANT = {dict(sorted(table.items()))}")
    for base in (r for r in measured if r["backbone"] == "small_cnn"):
        last = base["epochs"][-1] if base["epochs"] else {}
        auc = last.get("auc")
        print(f"baseline: small_cnn at {base['size']} px: held-out AUC "
              f"{'–' if auc is None else f'{auc:.3f}'}, constant "
              f"{'yes' if last.get('constant') else 'no'}, {base['seconds']:.0f} s")
    constant = sum(bool(r["epochs"] and r["epochs"][-1]["constant"]) for r in measured)
    print(f"{constant} of {len(measured)} (backbone, size) runs left a constant prediction")
    print(f"ratio: {constant / max(len(measured), 1):.2f}")


if __name__ == "__main__":
    main()
