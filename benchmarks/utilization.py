"""Worker-slot utilization of a search on a local two-node Ray cluster.

Starts a Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``: a head and a
worker, one CPU slot each), runs a search against it with ``--address``, and prints the fraction
of worker-slot time spent running trials over the search's wall time (``Tuner.fit``):
``sum(trial run time) / (slots x wall)``. Last line: ``utilization: X``.

    python benchmarks/utilization.py            # 8 trials x 3 epochs, real sample at 32 px
    python benchmarks/utilization.py --quick    # CI: 4 trials x 2 epochs
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter

from _common import DEFAULT_DATA, run_search, trial_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="4 trials x 2 epochs (CI)")
    args = p.parse_args()
    trials, epochs = (4, 2) if args.quick else (args.trials, args.epochs)

    from ray.cluster_utils import Cluster

    mem = 150 * 1024**2  # object store bytes per node
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": mem})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=mem)
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory(prefix="cnmc-bench-util-") as tmp:
            result = run_search([
                "--address", cluster.address, "--data", args.data, "--out", f"{tmp}/run",
                "--trials", str(trials), "--max-epochs", str(epochs), "--grace-period",
                str(epochs), "--image-size", "32", "--batch-size", "16", "--backbones",
                "small_cnn", "--no-final", "--seed", "0"])
            rows = trial_rows(result["out"])
    finally:
        cluster.shutdown()
    s = result["summary"]
    slots, wall = s["concurrent_trials"], s["tune_seconds"]
    busy = sum(r["ended_at"] - r["started_at"] for r in rows)
    train = sum(r["train_seconds"] for r in rows)
    per_node = Counter(r["node_id"][:8] for r in rows)
    print(f"{len(rows)} trials on {len(per_node)} nodes {dict(per_node)}, {slots} slots, "
          f"Tuner.fit wall {wall:.1f} s")
    print(f"trial run time {busy:.1f} s (training epochs {train:.1f} s) of "
          f"{slots * wall:.1f} slot-seconds")
    print(f"utilization: {busy / (slots * wall):.3f}")


if __name__ == "__main__":
    main()
