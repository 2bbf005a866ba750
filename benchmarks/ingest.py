"""Ingest rate (images/s) with one decoding worker and with all cores, and the scaling ratio.

    python benchmarks/ingest.py                 # real sample (../shared/data/cnmc-real), 224 px
    python benchmarks/ingest.py --quick         # CI: one repetition
    python benchmarks/ingest.py --data DIR --size 128 --repeat 3

Each configuration ingests the same folder into a fresh temporary store; the best of
``--repeat`` runs counts (the page cache is warm after the first). Last line: ``ratio: X``
(all cores / one worker).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from _common import DEFAULT_DATA


def ingest_rate(data: str, size: int, workers: int, repeat: int) -> float:
    from leukemia.store import ingest

    best = 0.0
    for _ in range(repeat):
        tmp = tempfile.mkdtemp(prefix="cnmc-bench-ingest-")
        try:
            t0 = time.perf_counter()
            manifest = ingest(data, f"{tmp}/store", size=size, workers=workers, progress=False)
            best = max(best, manifest["n_images"] / (time.perf_counter() - t0))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one repetition (CI)")
    args = p.parse_args()
    repeat = 1 if args.quick else args.repeat
    cores = os.cpu_count() or 1
    ingest_rate(args.data, args.size, cores, 1)  # warm the page cache and the imports
    one = ingest_rate(args.data, args.size, 1, repeat)
    many = ingest_rate(args.data, args.size, cores, repeat)
    print(f"ingest {args.data} at {args.size} px: 1 worker {one:,.0f} images/s; "
          f"{cores} workers {many:,.0f} images/s")
    print(f"ratio: {many / one:.2f}")


if __name__ == "__main__":
    main()
