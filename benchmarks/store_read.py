"""Images/second: per-file BMP reads (what notebooks do) against the Parquet image store.

On the same images (by default the 240-image real C-NMC sample in ../shared/data/cnmc-real),
this script

1. ingests them into a temporary store at ``--size`` px and prints the ingest rate;
2. times (a) reading every source BMP one file at a time with ``cv2.imread`` + ``cv2.resize``
   to ``--size`` (colour converted to RGB, into one preallocated uint8 batch), and
   (b) ``Store(...).load(None)``: every image of both splits in one numpy batch of that shape;
3. repeats each reader ``--repeat`` times after one untimed warm-up call (imports; the page
   cache is warm for both after the ingest), prints the best and median rates and, last,
   ``ratio: X`` = store rate / per-file rate (medians).

The per-file baseline does not crop to the cell, so it does less work than ingest did.

Run from the repository root (a fresh clone with the dependencies installed)::

    python benchmarks/store_read.py                  # real sample, 128 px, 5 repetitions
    python benchmarks/store_read.py --quick          # 1 repetition (CI)
    python benchmarks/store_read.py --data DIR --size 224 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CNMC_REAL_DATA",
                                   REPO.parent / "shared" / "data" / "cnmc-real"))


def read_per_file(paths: list[str], size: int) -> np.ndarray:
    """Read and resize every file with OpenCV, one at a time, into an (n, size, size, 3) batch."""
    import cv2

    batch = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: cv2.imread could not read it")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        batch[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return batch


def read_store(uri: str) -> np.ndarray:
    """Open the store and load every image (both splits) into one (n, size, size, 3) batch."""
    from leukemia.store import Store

    return Store(uri).load(None).images


def time_reader(fn: Callable[[], np.ndarray], repeat: int) -> tuple[list[float], np.ndarray]:
    """Seconds of each of ``repeat`` calls of ``fn`` after one untimed warm-up call (imports,
    first-use setup), and the last batch it returned."""
    batch = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        batch = fn()
        times.append(time.perf_counter() - t0)
    return times, batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"C-NMC_Leukemia folder or its parent (default: {DEFAULT_DATA})")
    p.add_argument("--size", type=int, default=128, help="stored image side in px (128)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions per reader (5)")
    p.add_argument("--quick", action="store_true", help="one repetition (for CI)")
    p.add_argument("--workers", type=int, default=None, help="ingest processes (all cores)")
    args = p.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    if repeat < 1:
        p.error(f"--repeat {repeat}: need at least 1")

    if not args.data.is_dir():
        print(f"error: no data at {args.data}; pass --data DIR (a C-NMC_Leukemia folder or its "
              "parent)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))  # this checkout's leukemia/, installed or not
    from leukemia.dataset import DatasetError, scan
    from leukemia.store import ingest

    with tempfile.TemporaryDirectory(prefix="store-read-") as tmp:
        uri = f"{tmp}/store"
        t0 = time.perf_counter()
        try:
            manifest = ingest(args.data, uri, size=args.size, workers=args.workers,
                              progress=False)
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ingest_s = time.perf_counter() - t0
        n = manifest["n_images"]
        paths = [r.source_path for r in scan(args.data).records]  # the images ingest stored
        if len(paths) != n:
            raise AssertionError(f"scan found {len(paths)} images, the store holds {n}")

        print(f"data: {manifest['source']} ({n} images)")
        print(f"size: {args.size} px, repetitions: {repeat} after a warm-up call, page cache warm")
        print(f"ingest (decode+crop+resize, {args.workers or 'all'} workers, incl. scan): "
              f"{ingest_s:.2f} s = {n / ingest_s:,.0f} images/s")

        rates = {}
        for name, fn in (("per-file cv2.imread+resize", lambda: read_per_file(paths, args.size)),
                         ("store Store.load", lambda: read_store(uri))):
            times, batch = time_reader(fn, repeat)
            if batch.shape != (n, args.size, args.size, 3) or batch.dtype != np.uint8:
                raise AssertionError(f"{name} returned {batch.shape} {batch.dtype}")
            best, median = n / min(times), n / statistics.median(times)
            rates[name] = median
            print(f"{name:<28} best {best:>10,.0f} images/s   median {median:>10,.0f} images/s")
        ratio = rates["store Store.load"] / rates["per-file cv2.imread+resize"]
        print(f"ratio: {ratio:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
