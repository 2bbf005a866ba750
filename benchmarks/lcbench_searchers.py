"""The searchers of ``benchmarks/searchers.py`` on YAHPO Gym's LCBench surrogate (``lcbench.py``).

Run it as ``python benchmarks/searchers.py --bench lcbench``. Each method is the same real
search as on the stored table (``ray_run`` / ``optuna_run`` there), over the continuous 7-knob
space of LCBench, one trial at a time, epochs 2..51 as ASHA's 50 training iterations, until the
run has spent ``--budget`` trial-epochs. Methods (ASHA / Hyperband knobs: ``--grace-period``,
``--reduction-factor``; each selects as its stack does by default):

- ``ours``, ``optuna+asha``, ``random+asha``, ``optuna-hb``: as in ``searchers.py``;
- ``ours-bohb`` / ``ours-weighted``: ours with ``search.searcher.RungTPESampler`` (TPE fitted on
  one of ASHA's rungs: BOHB's rule / rungs weighted by rank agreement, after Hyper-Tune);
- ``bohb``: Ray's ``TuneBOHB`` + ``HyperBandForBOHB`` (needs ``hpbandster`` and ``ConfigSpace``;
  skipped, with the reason, when they are not installed);
- ``random-full``: ``BasicVariantGenerator``, every trial to the full 50 epochs;
- ``one-epoch`` (Egele et al. 2023, "Is one epoch all you need?"): rounds of 50 random
  configurations trained one epoch each (Optuna's ``RandomSampler``, ask/tell), after each round
  the best one-epoch configuration not yet finished is trained the full 50 epochs (a restart, so
  one epoch of each finished configuration is paid twice); selects the best finished one.

Regret is YAHPO's normalised regret of the selected configuration at epoch 51,
``(max - acc) / (max - min)`` with the task's min/max over all of YAHPO's evaluations. The
target is per task: the regret of the best 1 % of 20,000 random configurations
(``--target-quantile``), so that it is equally hard on every task. Prints per task and pooled
(every task x seed one draw) the mean regret at several budgets and the median budget from
which the selection stays within the target, and last the ratio of ours to ``optuna+asha``
with its seed-bootstrap 90 % interval (``searchers.ratio_interval``). What it measured, and how
long it takes: PERFORMANCE.md, "Searchers on a public benchmark".

    python benchmarks/searchers.py --bench lcbench            # 3 tasks x 8 seeds, 1,000 epochs
    python benchmarks/searchers.py --bench lcbench --paper    # 6,544 epochs, 30 seeds (hours)
    python benchmarks/searchers.py --bench lcbench --quick    # CI: 1 task, 2 seeds, 200 epochs
    python benchmarks/searchers.py --bench lcbench --tasks 189906 --save a.pkl   # then
    python benchmarks/searchers.py --bench lcbench --load a.pkl,b.pkl,c.pkl      # tasks merged
"""

from __future__ import annotations

import argparse
import math
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lcbench
from searchers import (
    BASELINE,
    PICK,
    Run,
    optuna_run,
    ratio_interval,
    ray_run,
    regret_at,
    start_ray,
    time_to_target,
    trajectory,
)

METHODS = ("ours", "optuna+asha", "random+asha", "bohb", "optuna-hb", "random-full",
           "one-epoch", "ours-bohb", "ours-weighted")
QUICK = ("ours", "optuna+asha", "random+asha", "bohb", "optuna-hb", "random-full", "one-epoch",
         "ours-bohb")
PAPER_BUDGET = 6544  # ceil(20*52 + sqrt(7)*52*40): the YAHPO Gym paper's multi-fidelity budget


def one_epoch_run(seed: int, budget: int, table: lcbench.LCTable) -> Run:
    """Egele et al.'s baseline, anytime: rounds of one-epoch trials, then finish the best."""
    import optuna

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    run, spent, pool = Run(), 0, []  # pool: (one-epoch score, order, config id) not finished
    t0 = time.monotonic()
    while spent < budget:
        for _ in range(table.max_t):
            if spent >= budget:
                break
            trial = study.ask()
            table.define(trial)
            cid = table.config_id(trial.params)
            value = table.curves[cid][0]["objective"]
            study.tell(trial, value)
            run.trials.append((cid, 1, False))
            pool.append((value, -len(run.trials), cid))
            spent += 1
        if spent < budget and pool:
            pool.sort()
            cid = pool.pop()[2]
            ran = min(table.max_t, budget - spent)
            run.trials.append((cid, ran, False))
            spent += ran
    run.seconds = time.monotonic() - t0
    return run


def targets(tasks: list[str], quantile: float) -> dict[str, float]:
    """Per task: the normalised regret of the best ``quantile`` of random configurations."""
    configs = lcbench.random_configs(20000, seed=12345)
    out = {}
    for task in tasks:
        lo, hi = lcbench.bounds(task)
        regrets = sorted((hi - a) / (hi - lo) for a in lcbench.final_accuracy(task, configs))
        out[task] = regrets[int(quantile * (len(regrets) - 1))]
    return out


def run_lcbench(args: argparse.Namespace) -> int:
    """``searchers.py --bench lcbench``: every method on every task, then the report."""
    import optuna
    import ray

    runs: dict[tuple[str, str], list[tuple[lcbench.LCTable, Run]]] = {}
    if args.load:  # report runs saved by earlier --save runs (e.g. one task each, in parallel)
        tasks: list[str] = []
        methods: list[str] = []
        goal: dict[str, float] = {}
        for path in args.load.split(","):
            with open(path, "rb") as fh:
                saved = pickle.load(fh)
            tasks += [t for t in saved["tasks"] if t not in tasks]
            methods += [m for m in saved["methods"] if m not in methods]
            runs.update(saved["runs"])
            goal.update(saved["goal"])
            args.budget, args.seeds = saved["args"]["budget"], saved["args"]["seeds"]
        report(tasks, [m for m in methods if all((t, m) in runs for t in tasks)], runs, goal,
               args)
        return 0
    why = lcbench.missing()
    if why:
        raise SystemExit(f"--bench lcbench: {why}")
    if args.paper:
        args.budget, args.seeds = args.budget or PAPER_BUDGET, args.seeds or 30
    if args.quick:
        args.budget, args.seeds = args.budget or 200, args.seeds or 2
        args.tasks = args.tasks or "189906"
    args.budget, args.seeds = args.budget or 1000, args.seeds or 8
    tasks = (args.tasks or ",".join(lcbench.TASKS)).split(",")
    methods = (args.methods or ",".join(QUICK if args.quick else METHODS)).split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known on lcbench: {', '.join(METHODS)}")
    if "bohb" in methods:
        try:
            import ConfigSpace  # noqa: F401
            import hpbandster  # noqa: F401
        except ImportError:
            print("bohb: skipped (Ray's TuneBOHB needs `pip install hpbandster ConfigSpace`)",
                  flush=True)
            methods.remove("bohb")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # hpbandster's pandas calls
    goal = targets(tasks, args.target_quantile)
    print(f"LCBench surrogate ({lcbench.DATA}): tasks {', '.join(tasks)}; {args.seeds} seeds x "
          f"{args.budget} trial-epochs ({args.budget / 50:.0f} full trainings of 50 epochs); "
          f"ASHA grace {args.grace_period}, factor {args.reduction_factor}; target regret per "
          "task (best " f"{args.target_quantile:.1%} of random configurations): "
          + ", ".join(f"{t} {g:.4f}" for t, g in goal.items()), flush=True)
    start_ray()
    with tempfile.TemporaryDirectory(prefix="cnmc-bench-lcbench-") as tmp:
        for task in tasks:
            for method in methods:
                t0, done = time.monotonic(), []
                for seed in range(args.seeds):
                    table = lcbench.LCTable.for_task(task)
                    if method == "bohb":  # HyperBandForBOHB pauses trials: resume them
                        table.pauses = tuple(range(1, table.max_t))
                    if method == "one-epoch":
                        run = one_epoch_run(seed, args.budget, table)
                    elif method.startswith("optuna-"):
                        run = optuna_run(method, seed, args.budget, table, args.grace_period,
                                         args.reduction_factor)
                    else:
                        run = ray_run(method, seed, args.budget, table, args.grace_period,
                                      args.reduction_factor, args.startup, tmp)
                    done.append((table, run))
                runs[task, method] = done
                n = sum(len(r.trials) for _, r in done)
                took = time.monotonic() - t0
                print(f"{task} {method}: {args.seeds} searches, {n} trials in {took:.1f} s "
                      f"({took / max(n, 1) * 1e3:.0f} ms per trial)", file=sys.stderr,
                      flush=True)
    ray.shutdown()
    if args.save:
        with open(args.save, "wb") as fh:
            pickle.dump({"tasks": tasks, "methods": methods, "runs": runs, "goal": goal,
                         "args": vars(args)}, fh)
    report(tasks, methods, runs, goal, args)
    return 0


def report(tasks: list[str], methods: list[str],
           runs: dict[tuple[str, str], list[tuple[lcbench.LCTable, Run]]],
           goal: dict[str, float], args: argparse.Namespace) -> None:
    """Per task and pooled: mean regret by budget, budget to the target; the ratio last."""
    cols = sorted({b for b in (args.budget // 16, args.budget // 8, args.budget // 4,
                               args.budget // 2, args.budget) if b > 0})
    trajs = {(t, m): [trajectory(tab, run, PICK[m]) for tab, run in runs[t, m]]
             for t in tasks for m in methods}
    need: dict[str, list[float]] = {m: [] for m in methods}
    curves: dict[str, list[float]] = {m: [0.0] * len(cols) for m in methods}
    for task in tasks:
        print(f"\ntask {task}: mean normalised regret over {args.seeds} seeds by trial-epochs "
              f"spent (50 = one full training); budget to stay within {goal[task]:.4f}")
        print(f"{'method':>14}{''.join(f'{c:>9d}' for c in cols)}   median (seeds that get there)")
        for m in methods:
            ts = trajs[task, m]
            mean = [statistics.mean(regret_at(tr, c, 1.0) for tr in ts) for c in cols]
            hit = [time_to_target(tr, goal[task]) for tr in ts]
            need[m] += hit
            curves[m] = [a + b / len(tasks) for a, b in zip(curves[m], mean)]
            print(f"{m:>14}{''.join(f'{v:9.4f}' for v in mean)}   "
                  f"{statistics.median(hit):>8.0f} ({sum(h < math.inf for h in hit)}/{len(hit)})")
    print(f"\npooled over {len(tasks)} task(s) x {args.seeds} seeds: mean normalised regret; "
          "median trial-epochs to the task's target")
    print(f"{'method':>14}{''.join(f'{c:>9d}' for c in cols)}   median (draws that get there)")
    for m in methods:
        hit = need[m]
        print(f"{m:>14}{''.join(f'{v:9.4f}' for v in curves[m])}   "
              f"{statistics.median(hit):>8.0f} ({sum(h < math.inf for h in hit)}/{len(hit)})")
    if args.plot:
        write_plot(args.plot, tasks, methods, trajs, args)
    if "ours" in methods and BASELINE in methods:
        ours, base = statistics.median(need["ours"]), statistics.median(need[BASELINE])
        lo, hi = ratio_interval(need["ours"], need[BASELINE])
        what = (f"(trial-epochs ours needs to stay within the target / what {BASELINE} needs; "
                f"medians over {len(need['ours'])} task-seeds)")
        ratio = (f"{ours / base:.3f}" if base < math.inf else
                 f"<{ours / args.budget:.3f}" if ours < math.inf else "nan")
        print(f"\nratio: {ratio}  {what}")
        print(f"90% interval is {lo:.2f}-{hi:.2f}")


def write_plot(path: str, tasks: list[str], methods: list[str],
               trajs: dict[tuple[str, str], list[list[tuple[int, float, float]]]],
               args: argparse.Namespace) -> None:
    """Mean normalised regret (pooled over tasks) versus trial-epochs, as a standalone SVG."""
    from searchers import COLOURS

    from leukemia.files import atomic_write

    w, h, left, bottom, top, right = 680, 360, 56, 40, 16, 130
    xs = [round(50 * 2 ** (k / 4)) for k in range(-8, 80)]
    xs = [x for x in xs if x <= args.budget]
    ys = {m: [statistics.mean(regret_at(tr, x, 1.0) for t in tasks for tr in trajs[t, m])
              for x in xs] for m in methods}
    ymax = min(0.5, max(max(v) for v in ys.values()))

    def px(x: float, y: float) -> tuple[float, float]:
        lx = math.log(x / xs[0]) / math.log(xs[-1] / xs[0])
        return left + lx * (w - left - right), top + (1 - min(y, ymax) / ymax) * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             'font-family="sans-serif" font-size="11">', f'<rect width="{w}" height="{h}" '
             'fill="white"/>']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        _, y = px(xs[0], ymax * frac)
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{ymax * frac:.2f}</text>')
    for b in (25, 50, 100, 200, 500, 1000, 2000, 6544):
        if xs[0] <= b <= xs[-1]:
            x, _ = px(b, 0)
            parts.append(f'<text x="{x:.1f}" y="{h - bottom + 14}" '
                         f'text-anchor="middle">{b}</text>')
    for i, m in enumerate(methods):
        pts = " ".join("{:.1f},{:.1f}".format(*px(x, y)) for x, y in zip(xs, ys[m]))
        c = COLOURS.get(m, "#8c564b")
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>'
                     f'<text x="{w - right + 8}" y="{top + 14 * i + 8}" fill="{c}">{m}</text>')
    mid = (top + h - bottom) / 2
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">'
                 'trial-epochs spent (log scale; 50 = one full training)</text>'
                 f'<text x="12" y="{mid}" text-anchor="middle" transform="rotate(-90 12 {mid})">'
                 f'LCBench normalised regret, {len(tasks)} tasks x {args.seeds} seeds</text>'
                 '</svg>')
    atomic_write(path, "\n".join(parts) + "\n")
    print(f"plot: {Path(path)}")
