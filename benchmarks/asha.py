"""ASHA against running every trial to the full budget: the same search, the same trials.

Both runs use the same seed and at most 10 trials, which TPE samples at random (its start-up
phase), so both evaluate the same configurations; one lets ASHA stop weak trials, the other runs
every trial to ``--max-epochs`` (grace period = budget). Prints trial-epochs consumed, wall time
and the best held-out weighted F1 of each, then ``epochs_ratio`` (ASHA / full) and, last,
``score_gap`` (full best - ASHA best).

    python benchmarks/asha.py            # real sample, 32 px, 10 trials x 27 epochs, grace 3
    python benchmarks/asha.py --quick    # CI: 4 trials x 3 epochs
"""

from __future__ import annotations

import argparse
import tempfile

from _common import DEFAULT_DATA, run_search


def search(data: str, tmp: str, name: str, trials: int, epochs: int, grace: int,
           size: int) -> dict:
    argv = ["--data", data, "--out", f"{tmp}/{name}", "--trials", str(trials), "--max-epochs",
            str(epochs), "--grace-period", str(grace), "--reduction-factor", "3",
            "--image-size", str(size), "--batch-size", "8", "--backbones", "small_cnn,unet",
            "--no-final", "--seed", "0"]
    s = run_search(argv)["summary"]
    return {"epochs": s["trial_epochs"], "wall": s["tune_seconds"],
            "best": s["best_val_fold_weighted_f1"] or 0.0, "counts": s["trial_counts"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--max-epochs", type=int, default=27)
    p.add_argument("--grace-period", type=int, default=3,
                   help="ASHA grace period (epochs before the first stop)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="4 trials x 3 epochs (CI)")
    args = p.parse_args()
    trials, epochs, grace = ((4, 3, 1) if args.quick
                             else (min(args.trials, 10), args.max_epochs, args.grace_period))
    with tempfile.TemporaryDirectory(prefix="cnmc-bench-asha-") as tmp:
        asha = search(args.data, tmp, "asha", trials, epochs, grace, args.image_size)
        full = search(args.data, tmp, "full", trials, epochs, epochs, args.image_size)
    for name, r in (("ASHA", asha), ("full budget", full)):
        print(f"{name:>11}: {r['epochs']} trial-epochs, {r['wall']:.1f} s, best held-out "
              f"weighted F1 {r['best']:.4f} ({r['counts']})")
    print(f"epochs_ratio: {asha['epochs'] / full['epochs']:.3f}")
    print(f"wall_ratio: {asha['wall'] / full['wall']:.3f}")
    print(f"score_gap: {full['best'] - asha['best']:.4f}")


if __name__ == "__main__":
    main()
