"""Trials per hour with 1, 2 and 4 trials sharing one GPU, and GPU memory per trial.

Runs the same small search on the demo data with ``--trials-per-gpu`` 1, 2 and 4 on a machine
with an NVIDIA GPU and TensorFlow's GPU build (``pip install -e '.[gpu]'``); prints trials/hour,
each trial's TensorFlow memory cap, and, last, ``ratio: X`` (trials/hour at 4 per GPU over 1).
Without a GPU it says so and exits 0.

    python benchmarks/gpu_packing.py
    python benchmarks/gpu_packing.py --quick     # CI: skips without a GPU
"""

from __future__ import annotations

import argparse
import tempfile

from _common import run_search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="4 trials x 1 epoch")
    args = p.parse_args()

    from search.resources import gpu_memory_cap_mb, local_gpu_memory_mb

    mem = local_gpu_memory_mb()
    if not mem:
        print("skipped: no NVIDIA GPU on this machine (nvidia-smi not found or no device)")
        return
    trials, epochs = (4, 1) if args.quick else (args.trials, args.epochs)
    rates = {}
    with tempfile.TemporaryDirectory(prefix="cnmc-bench-gpu-") as tmp:
        for k in (1, 2, 4):
            s = run_search(["--out", f"{tmp}/k{k}", "--trials", str(trials), "--max-epochs",
                            str(epochs), "--grace-period", str(epochs), "--trials-per-gpu",
                            str(k), "--gpus", "1", "--no-final", "--backbones",
                            "mobilenet_v3_small,efficientnet_b0"])["summary"]
            rates[k] = trials / s["tune_seconds"] * 3600
            cap = gpu_memory_cap_mb(mem, k) if k > 1 else mem
            print(f"{k} trial(s) per GPU: {rates[k]:.0f} trials/hour, up to {cap} MiB each")
    print(f"ratio: {rates[4] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
