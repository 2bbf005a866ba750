"""Which held-out score should a search select on? Measured on real patients.

The search ranks (configuration, epoch) pairs by a score on one held-out patient fold. Three
candidates: weighted F1 at the 0.5 threshold (the C-NMC metric as is), weighted F1 at the fold's
own best threshold (the final step chooses a threshold anyway), and ROC AUC (ranking only). A
good signal picks configurations that do well on *other* patients.

The search's own objective (``search.trainable.objective``: wF1 at 0.5, or ROC AUC - 1 for a model
that calls every held-out cell the same class) is a fourth row; with a backbone that stays
constant in the pool (``--backbones small_cnn,mobilenet_v3_small --image-size 96``) the table
also says how often each signal picks a constant predictor.

Protocol: the dev set (``../shared/data/cnmc-dev``: official fold_1, 14 patients, 3 of them
normal) is split into 3 patient groups, one normal patient each (``leukemia.folds.cv_folds``).
Every configuration of a pool sampled from the real search space (``search/space.py``, Optuna's
random sampler) is trained on one group and scored after every epoch on the other two: one is
the selection fold, the other the test fold (both roles, every group trained on once). A
simulated search of ``--k`` trials picks the (configuration, epoch) with the best signal on the
selection fold; we record that pick's test-fold ROC AUC and its test weighted F1 at the
threshold chosen on the selection fold (what the exported model would use). Averaged over many
random subsets of the pool and over the 6 (train, select, test) arrangements.

    python benchmarks/selection.py                 # 12 configurations, 48 px, 8 epochs
    python benchmarks/selection.py --quick         # the 240-image sample, 3 configurations (CI)

Rows are appended to ``--results`` (JSON lines) as each training finishes, so a cut-off run
resumes. Then the same simulated searches with the search's signal, two ways to pick the trial the
final step trains: the peak epoch of any trial, or the best last-epoch score (the full-budget
run; ``search.results.best_trial``). Last line: ``best: <signal>`` by mean test weighted F1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_DATA, REPO

DEV = Path(os.environ.get("CNMC_DEV_DATA", REPO.parent / "shared" / "data" / "cnmc-dev"))
# "objective" is the search's own (search.trainable.objective): wF1 at 0.5, or AUC - 1 for a
# model that calls every cell the same class
SIGNALS = ("objective", "wf1_at_0.5", "wf1_at_best_threshold", "roc_auc")


def _store(data: Path, size: int, cache: Path) -> str:
    from leukemia.store import Store, StoreError, ingest

    path = cache / f"{data.name}-{size}px-window320"
    try:
        Store(path)
        return str(path)
    except StoreError:
        pass
    ingest(data, str(path), size=size, crop="window", window=320, progress=False)
    return str(path)


def _pool(n: int, backbones: list[str], seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn from the search space with Optuna's random sampler."""
    import optuna

    from search.space import define_space, to_train_overrides

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        define_space(trial, backbones=backbones)
        out.append(to_train_overrides(trial.params))
        study.tell(trial, 0.0)
    return out


def _epoch_scores(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from leukemia import metrics as M
    from search.trainable import is_constant, objective

    row = {f"val_{k}": v for k, v in M.binary_metrics(y, p, n_boot=0).items()}
    out: dict[str, Any] = {"wf1_at_0.5": M.weighted_f1(y, (p >= 0.5).astype(int)),
                           "objective": objective(row), "constant": is_constant(row),
                           "roc_auc": None, "wf1_at_best_threshold": None, "threshold": 0.5}
    if len(set(y.tolist())) == 2:
        t = M.best_threshold(y, p)
        out.update(wf1_at_best_threshold=M.weighted_f1(y, (p >= t).astype(int)),
                   roc_auc=M.roc_auc(y, p), threshold=float(t))
    return out


def train_one(cfg: dict[str, Any], data: Any, groups: np.ndarray, train_group: int,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train ``cfg`` on one patient group; per epoch, score every other group."""
    from leukemia.config import TrainConfig
    from leukemia.train import fit, predict_proba

    config = TrainConfig().override({**cfg, "image_size": args.image_size,
                                     "epochs": args.epochs, "batch_size": 32, "seed": 0,
                                     "val_fold": None})
    train = data.subset(groups == train_group)
    others = {g: data.subset(groups == g) for g in sorted(set(groups.tolist()))
              if g != train_group}
    rows: list[dict[str, Any]] = []

    def on_epoch(epoch: int, row: dict[str, Any], model: Any) -> None:
        for g, sel in others.items():
            p = predict_proba(model, sel.images)
            rows.append({"epoch": epoch, "group": g, "labels": sel.labels.tolist(),
                         "probs": np.round(p, 5).tolist()})

    fit(config, (train, None), [on_epoch])
    return rows


def _score_table(results: list[dict[str, Any]]) -> dict[tuple[int, int, int, int], dict]:
    """(config, train group, epoch, scored group) -> that group's scores (and labels, probs)."""
    table: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    for r in results:
        for e in r["epochs"]:
            y, p = np.asarray(e["labels"]), np.asarray(e["probs"])
            s: dict[str, Any] = dict(_epoch_scores(y, p))
            s["y"], s["p"] = y, p
            table[(r["config"], r["train_group"], e["epoch"], e["group"])] = s
    return table


def _simulated_searches(table: dict, k: int, draws: int, seed: int):
    """(train, select, test group, the candidate (config, epoch) pairs) of each simulated
    search: ``draws`` random subsets of ``k`` configurations per arrangement."""
    configs = sorted({key[0] for key in table})
    arrangements = sorted({(a, b) for (_, a, _, b) in table})
    rng = np.random.default_rng(seed)
    for train_g, sel_g in arrangements:
        test_g = next((b for (a, b) in arrangements if a == train_g and b != sel_g), None)
        if test_g is None:
            continue
        for _ in range(draws):
            subset = rng.choice(configs, size=min(k, len(configs)), replace=False)
            cands = [(c, e) for (c, a, e, b) in table if a == train_g and b == sel_g
                     and c in subset]
            yield train_g, sel_g, test_g, cands


def analyse(table: dict, k: int, draws: int, seed: int) -> dict[str, dict[str, float]]:
    """Mean test scores of the picks each signal makes in simulated searches of ``k`` trials
    (``table``: :func:`_score_table`)."""
    from leukemia import metrics as M

    out: dict[str, dict[str, list[float]]] = {
        s: {"test_auc": [], "test_wf1": [], "test_wf1_05": [], "constant": []} for s in SIGNALS}
    for train_g, sel_g, test_g, cands in _simulated_searches(table, k, draws, seed):
        for signal in SIGNALS:
            scored = [(table[(c, train_g, e, sel_g)][signal], c, e) for c, e in cands
                      if table[(c, train_g, e, sel_g)][signal] is not None]
            if not scored:
                continue
            _, c, e = max(scored, key=lambda t: (t[0], -t[2]))
            sel, test = table[(c, train_g, e, sel_g)], table[(c, train_g, e, test_g)]
            out[signal]["constant"].append(float(test["constant"]))
            if test["roc_auc"] is not None:
                out[signal]["test_auc"].append(test["roc_auc"])
            t = sel["threshold"] if signal not in ("wf1_at_0.5", "objective") else 0.5
            out[signal]["test_wf1"].append(
                M.weighted_f1(test["y"], (test["p"] >= t).astype(int)))
            out[signal]["test_wf1_05"].append(test["wf1_at_0.5"])  # the exported default rule
    return {s: {m: float(np.mean(v)) if v else float("nan") for m, v in d.items()}
            for s, d in out.items()}


EPOCH_RULES = ("peak epoch of any trial", "last epoch (full budget)")


def analyse_epochs(table: dict, k: int, draws: int, seed: int) -> dict[str, dict[str, float]]:
    """The search's signal (``objective``), two ways to pick the trial the final trains: the
    (configuration, epoch) with the highest selection score at any epoch (the final then trains
    that many epochs), or the configuration with the highest score at the last epoch (the
    final trains them all; ``search.results.best_trial``). Scored on the test patients at the
    picked epoch: by ranking (AUC), wF1 at 0.5, and wF1 at the threshold chosen on the selection
    patients (as the exported model's threshold is chosen on held-out patients)."""
    from leukemia import metrics as M

    out: dict[str, dict[str, list[float]]] = {
        r: {"test_auc": [], "test_wf1": [], "test_wf1_threshold": []} for r in EPOCH_RULES}
    last = max(key[2] for key in table)
    for train_g, sel_g, test_g, cands in _simulated_searches(table, k, draws, seed):
        signal = {(c, e): table[(c, train_g, e, sel_g)]["objective"] for c, e in cands}
        if not signal:
            continue
        peak = max(signal, key=lambda ce: (signal[ce], -ce[1], -ce[0]))
        full = max((ce for ce in signal if ce[1] == last), key=lambda ce: (signal[ce], -ce[0]))
        for rule, (c, e) in zip(EPOCH_RULES, (peak, full)):
            test = table[(c, train_g, e, test_g)]
            if test["roc_auc"] is not None:
                out[rule]["test_auc"].append(test["roc_auc"])
            out[rule]["test_wf1"].append(M.weighted_f1(test["y"], (test["p"] >= 0.5).astype(int)))
            t = table[(c, train_g, e, sel_g)]["threshold"]
            out[rule]["test_wf1_threshold"].append(
                M.weighted_f1(test["y"], (test["p"] >= t).astype(int)))
    return {r: {m: float(np.mean(v)) if v else float("nan") for m, v in d.items()}
            for r, d in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEV, help="a one-fold C-NMC folder (dev set)")
    p.add_argument("--configs", type=int, default=12, help="configurations in the pool")
    p.add_argument("--backbones", default="small_cnn,unet")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--k", type=int, default=6, help="trials per simulated search")
    p.add_argument("--draws", type=int, default=200, help="simulated searches per arrangement")
    p.add_argument("--results", type=Path, default=None, help="JSON-lines results (resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="240-image sample, 3 configs, 2 epochs")
    args = p.parse_args()
    if args.quick:
        args.data, args.configs, args.epochs, args.image_size, args.k = \
            DEFAULT_DATA, 3, 2, 32, 2
    cache = Path(os.environ.get("CNMC_CACHE", Path.home() / ".cache" / "cnmc-search"))
    cache = cache / "selection"
    cache.mkdir(parents=True, exist_ok=True)
    results_path = args.results or cache / (
        f"selection-{args.data.name}-{args.image_size}px-{args.epochs}ep.jsonl")

    from leukemia.folds import cv_folds
    from leukemia.store import Store

    data = Store(_store(args.data, args.image_size, cache)).load("training")
    groups = cv_folds(data.patient_ids, data.labels, np.zeros(len(data), np.int8))
    pool = _pool(args.configs, args.backbones.split(","), args.seed)
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["config"], r["train_group"])] = r
    t0 = time.monotonic()
    for (i, cfg), g in itertools.product(enumerate(pool), sorted(set(groups.tolist()))):
        if (i, g) in done:
            continue
        t = time.monotonic()
        epochs = train_one(cfg, data, groups, g, args)
        r = {"config": i, "train_group": g, "params": cfg, "epochs": epochs,
             "seconds": round(time.monotonic() - t, 1)}
        with open(results_path, "a") as fh:
            fh.write(json.dumps(r) + "\n")
        done[(i, g)] = r
        print(f"config {i} ({cfg['backbone']}, lr {cfg['learning_rate']:.2g}) trained on group "
              f"{g}: {r['seconds']:.0f} s", flush=True)
    table = _score_table(list(done.values()))  # scored once, read by both analyses
    draws = 20 if args.quick else args.draws
    res = analyse(table, args.k, draws, args.seed)
    print(f"\n{len(pool)} configurations x {len(set(groups.tolist()))} training groups, "
          f"{args.epochs} epochs, {args.image_size} px; simulated searches of {args.k} trials "
          f"({time.monotonic() - t0:.0f} s)")
    constant = sorted({key[0] for key, s in table.items() if s["constant"]
                       and key[2] == args.epochs})
    print(f"configurations constant at the last epoch on some group: {constant} of "
          f"{[(i, c['backbone']) for i, c in enumerate(pool)]}")
    print(f"{'selection signal':<24} {'test ROC AUC':>12} {'test wF1':>9} {'test wF1@0.5':>13} "
          f"{'picks constant':>15}")
    for s, m in res.items():
        print(f"{s:<24} {m['test_auc']:>12.4f} {m['test_wf1']:>9.4f} {m['test_wf1_05']:>13.4f} "
              f"{m['constant']:>15.3f}")
    rules = analyse_epochs(table, args.k, draws, args.seed)
    print(f"\n{'which trial (signal objective)':<32} {'test ROC AUC':>12} {'test wF1':>9} "
          f"{'test wF1 at the selection threshold':>36}")
    for r, m in rules.items():
        print(f"{r:<32} {m['test_auc']:>12.4f} {m['test_wf1']:>9.4f} "
              f"{m['test_wf1_threshold']:>36.4f}")
    best = max(res, key=lambda s: (np.nan_to_num(res[s]["test_wf1"], nan=-1), s))
    print(f"best: {best}")


if __name__ == "__main__":
    main()
