"""Per-trial overhead of the search, with and without worker reuse (``reuse_actors``).

On one worker slot (trials run one after another), the same small search runs twice: with
worker processes reused across trials (the default) and with a fresh process per trial
(``--no-reuse-actors``). From the trials' own timestamps it prints, per configuration:

- ``between trials``: seconds from one trial's last report to the next trial's start on the
  slot (process start-up, imports, Ray scheduling);
- ``start to first step``: seconds from a trial's start to its first training step (store
  selection, model build, tf.data set-up; graph tracing is inside the first step);
- ``outside training``: the share of the search's wall time (``Tuner.fit``) not spent in
  training epochs.

Last line: ``ratio: X`` = between-trials seconds without reuse / with reuse.

    python benchmarks/trial_overhead.py            # 6 trials x 2 epochs, real sample at 32 px
    python benchmarks/trial_overhead.py --quick    # CI: 3 trials x 1 epoch
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import DEFAULT_DATA, run_search, trial_rows


def measure(data: str, trials: int, epochs: int, reuse: bool, tmp: str) -> dict[str, float]:
    out = f"{tmp}/{'reuse' if reuse else 'fresh'}"
    argv = ["--data", data, "--out", out, "--trials", str(trials), "--max-epochs", str(epochs),
            "--grace-period", str(epochs), "--image-size", "32", "--batch-size", "16",
            "--backbones", "small_cnn", "--max-concurrent", "1", "--no-final", "--seed", "0"]
    result = run_search(argv + ([] if reuse else ["--no-reuse-actors"]))
    rows = trial_rows(result["out"])
    gaps = [b["started_at"] - a["ended_at"] for a, b in zip(rows, rows[1:])]
    first = [r["first_step_at"] - r["started_at"] for r in rows if r["first_step_at"]]
    wall = result["summary"]["tune_seconds"]
    return {"between": statistics.median(gaps), "first_step": statistics.median(first),
            "outside": 1 - sum(r["train_seconds"] for r in rows) / wall, "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 trials x 1 epoch (CI)")
    args = p.parse_args()
    trials, epochs = (3, 1) if args.quick else (args.trials, args.epochs)
    with tempfile.TemporaryDirectory(prefix="cnmc-bench-overhead-") as tmp:
        reuse = measure(args.data, trials, epochs, True, tmp)
        fresh = measure(args.data, trials, epochs, False, tmp)
    for name, m in (("reuse_actors", reuse), ("fresh process", fresh)):
        print(f"{name:>13}: between trials {m['between']:.2f} s, start to first step "
              f"{m['first_step']:.2f} s, outside training {m['outside']:.0%} of "
              f"{m['wall']:.1f} s")
    print(f"per-trial overhead with reuse: {reuse['between']:.2f} s")
    print(f"ratio: {fresh['between'] / max(reuse['between'], 1e-3):.2f}")


if __name__ == "__main__":
    main()
