"""Memory of a node's trial workers: one decoded copy of the store each, or one shared copy.

The store: by default the real dev set (../shared/data/cnmc-dev, 3,499 cells of official
fold_1) ingested at 224 px, its cells then copied into 3 official folds with their own patient
and image ids (``--tile 3``): C-NMC's training set has 3 folds of about that size, so the
decoded set is as large as a real search's (1.6 GB). The script starts 1, 2 and 4 worker
processes at once, each loading the training split (fold 0 held out) the way a trial does, in
two modes:

- ``in-process``: ``leukemia.folds.load_split`` in each worker (what trials did before: each
  worker decodes the Parquet store into its own arrays);
- ``shared``: ``search.trainable._data`` (what trials do now): the first worker decodes the
  store into one uncompressed file in the node-local cache (``$CNMC_CACHE``, fresh for each
  count, so the workers start together on an empty cache as a search's first trials do) and
  every worker memory-maps it.

Each worker then runs ``--epochs`` epochs of the training input's gathers (shuffled batches of
32, ``images[idx]`` as ``leukemia.pipeline.make_dataset`` gathers them; the first touches
every page, the median of the others is a trial's later epochs) and waits. With all of them
loaded, the script reads each worker's PSS (proportional set size: a page shared by k
processes counts 1/k in each) from ``/proc/<pid>/smaps_rollup``; the node's memory for the
workers is the sum. It prints, per mode and count, that total against one worker's, its
anonymous part, the PSS of the decoded file's mappings, the load time and the epoch times,
then one more shared worker started with the file already there (the load of every later
trial worker on the node). Last line: ``ratio: R`` = the 4 shared workers' total PSS over one
shared worker's (each worker's own interpreter, NumPy, pyarrow and scikit-learn count on top of
the one copy of the pixels, so a small store gives a larger ratio). Figures: PERFORMANCE.md,
"Memory".

Run from the repository root::

    python benchmarks/store_memory.py                 # the 1.6 GB set; 1 in-process worker
    python benchmarks/store_memory.py --tile 1 --in-process-counts 1,2,4   # cnmc-dev as it is
    python benchmarks/store_memory.py --quick         # CI: the 240-image sample at 64 px
    python benchmarks/store_memory.py --store STORE --tile 1   # an existing store (no ingest)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_DATA = Path(os.environ.get("CNMC_DEV_DATA", SHARED_DATA / "cnmc-dev"))
QUICK_DATA = Path(os.environ.get("CNMC_REAL_DATA", SHARED_DATA / "cnmc-real"))
BATCH = 32  # TrainConfig's default batch size


# ---------------------------------------------------------------------------------------------
# The worker (a separate process)


def worker(mode: str, store: str, val_fold: int, seed: int, epochs: int) -> None:
    """Load the training split as a trial does, run ``epochs`` epochs of gathers, report, wait."""
    sys.path.insert(0, str(REPO))
    from leukemia.config import TrainConfig
    from leukemia.folds import load_split
    from leukemia.store import Store
    from search.trainable import _data

    t0 = time.perf_counter()  # imports done: a reused worker has them already
    if mode == "in-process":
        train, _val = load_split(Store(store), TrainConfig(val_fold=val_fold))
    else:
        train, _val = _data(store, val_fold)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    times, total = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(train))
        t0 = time.perf_counter()
        for start in range(0, len(order), BATCH):
            batch = train.images[order[start:start + BATCH]]  # make_dataset's gather
            total += int(batch[:, 0, 0, 0].sum())
        times.append(time.perf_counter() - t0)
    print(json.dumps({"pid": os.getpid(), "load_s": load_s, "epoch_s": times,
                      "n": len(train), "nbytes": int(train.images.nbytes), "check": total}),
          flush=True)
    sys.stdin.readline()  # stay alive (and mapped) until the parent has read our memory


# ---------------------------------------------------------------------------------------------
# The parent


def memory(pid: int) -> dict[str, float]:
    """MB of PSS (all, anonymous, file-backed) and RSS of a process, and the PSS of its mappings
    of decoded store files (``.arrow``)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_File", "Rss"):
            out[key] = int(rest.split()[0]) / 1024
    decoded, in_decoded = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            in_decoded = line.rstrip().endswith(".arrow")
        elif in_decoded and head[0] == "Pss:":
            decoded += int(head[1])
    out["decoded"] = decoded / 1024
    return out


def gather_epoch(images: np.ndarray, order: np.ndarray) -> float:
    """Seconds of one epoch of ``make_dataset``'s batch gathers in ``order``."""
    t0, total = time.perf_counter(), 0
    for start in range(0, len(order), BATCH):
        total += int(images[order[start:start + BATCH]][:, 0, 0, 0].sum())
    return time.perf_counter() - t0


def interleaved(store: str, cache: Path, rounds: int) -> tuple[float, float]:
    """Median epoch seconds of the mapped file and of an in-memory copy of it (the numpy array
    ``load_split`` gives), epochs alternating in this one process so load on the machine hits
    both alike."""
    os.environ["CNMC_CACHE"] = str(cache)
    from search.trainable import _data

    mapped = _data(store, 0)[0].images
    copy = np.array(mapped)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"mapped": [], "copy": []}
    for _ in range(rounds + 1):  # the first round touches the pages: not counted
        order = rng.permutation(len(copy))
        for name, images in (("mapped", mapped), ("copy", copy)):
            times[name].append(gather_epoch(images, order))
    return (statistics.median(times["mapped"][1:]), statistics.median(times["copy"][1:]))


def steady(report: dict) -> float:
    """Median seconds of a worker's epochs after the first."""
    return statistics.median(report["epoch_s"][1:])


def tile_store(store: str, dest: str, copies: int) -> str:
    """A store holding ``copies`` copies of ``store``'s training cells, copy k as official fold
    k with its own patient and image ids (so the folds are disjoint in patients)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from leukemia.store import DATA_FILE, MANIFEST, ROW_GROUP, Store

    src = Store(store)
    table = pq.read_table(f"{store}/{src.data_file}")
    table = table.filter(pc.equal(table["split"], "training"))
    parts = []
    for k in range(copies):
        t = table
        for name in ("patient_id", "image_id"):
            t = t.set_column(t.schema.get_field_index(name), name,
                             pc.binary_join_element_wise(t[name], pa.scalar(f"t{k}"), "-"))
        t = t.set_column(t.schema.get_field_index("fold"), "fold",
                         pa.array(np.full(len(t), k, np.int8)))
        parts.append(t)
    Path(dest).mkdir()
    pq.write_table(pa.concat_tables(parts), f"{dest}/{DATA_FILE}", row_group_size=ROW_GROUP,
                   compression="zstd", compression_level=1)
    n = len(table) * copies
    manifest = dict(src.manifest, data_file=DATA_FILE, n_images=n,
                    content_checksum=f"{src.checksum[:48]}-tiled-x{copies}",
                    splits={"training": {"n": n}},
                    folds={str(k): {"n": len(table)} for k in range(copies)})
    Path(f"{dest}/{MANIFEST}").write_text(json.dumps(manifest, indent=2))
    return dest


def run_workers(mode: str, n: int, store: str, cache: Path, epochs: int) -> dict:
    """Start ``n`` workers at once; return their reports and memory once all have loaded."""
    env = dict(os.environ, CNMC_CACHE=str(cache), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", mode, store, str(i),
                               str(epochs)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                              cwd=REPO) for i in range(n)]
    try:
        reports = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"a {mode} worker exited with {p.wait()} before reporting")
            reports.append(json.loads(line))
        mem = [memory(p.pid) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                assert p.stdin is not None
                p.stdin.write("\n")
                p.stdin.flush()
        for p in procs:
            p.wait(timeout=60)
    return {"mode": mode, "n": n, "reports": reports, "mem": mem,
            "pss": sum(m["Pss"] for m in mem), "decoded": sum(m["decoded"] for m in mem)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help=f"C-NMC_Leukemia folder or its parent (default: {DEFAULT_DATA})")
    p.add_argument("--store", default=None, help="an existing store to read (skips the ingest)")
    p.add_argument("--size", type=int, default=None, help="stored image side in px (224)")
    p.add_argument("--counts", default="1,2,4", help="worker counts, the last one for the "
                   "ratio (1,2,4)")
    p.add_argument("--in-process-counts", default=None,
                   help="worker counts of the in-process baseline (1; --quick: --counts): each "
                   "in-process worker holds ~3.5x the decoded set, 5.5 GB at --tile 3")
    p.add_argument("--tile", type=int, default=None,
                   help="copies of the store's training cells, one official fold each (3: the "
                   "size of C-NMC's training set; --quick: 1)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of gathers per worker: the "
                   "first touches every page, the median of the others is reported (4)")
    p.add_argument("--quick", action="store_true", help="the 240-image sample at 64 px (CI)")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        mode, store, index, epochs = args.worker
        worker(mode, store, val_fold=0, seed=int(index), epochs=int(epochs))
        return 0
    counts = [int(c) for c in args.counts.split(",")]
    base_counts = [int(c) for c in (args.in_process_counts
                                    or (args.counts if args.quick else "1")).split(",")]
    for name, cs in (("--counts", counts), ("--in-process-counts", base_counts)):
        if cs[0] != 1 or any(c < 1 for c in cs):
            p.error(f"{name} {','.join(map(str, cs))}: must start with 1 (the baseline)")
    if args.epochs < 2:
        p.error(f"--epochs {args.epochs}: need at least 2 (a first and a steady one)")
    tile = args.tile or (1 if args.quick else 3)
    data = args.data or (QUICK_DATA if args.quick else DEFAULT_DATA)
    size = args.size or (64 if args.quick else 224)

    sys.path.insert(0, str(REPO))
    from leukemia.dataset import DatasetError
    from leukemia.store import Store, ingest

    with tempfile.TemporaryDirectory(prefix="store-memory-") as tmp:
        store = args.store
        if store is None:
            if not data.is_dir():
                print(f"error: no data at {data}; pass --data DIR (a C-NMC_Leukemia folder or "
                      "its parent) or --store STORE", file=sys.stderr)
                return 2
            store = f"{tmp}/store"
            t0 = time.perf_counter()
            try:
                ingest(data, store, size=size, progress=False)
            except DatasetError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(f"ingest: {time.perf_counter() - t0:.1f} s")
        if tile > 1:
            store = tile_store(store, f"{tmp}/tiled", tile)
        manifest = Store(store).manifest
        tiled = f", its cells {tile}x as {tile} folds" if tile > 1 else ""
        print(f"store: {manifest['source']}{tiled}, {manifest['n_images']} images at "
              f"{manifest['image_size']} px; training split held out at fold 0")

        runs = []
        for mode, cs in (("in-process", base_counts), ("shared", counts)):
            for n in cs:
                runs.append(run_workers(mode, n, store, Path(tmp) / f"cache-{mode}-{n}",
                                        args.epochs))
        # one more worker on a node where the file is already there (every later trial worker)
        warm = run_workers("shared", 1, store, Path(tmp) / "cache-shared-1", args.epochs)
        warm["mode"] = "shared, file there"
        runs.append(warm)

        first = runs[0]["reports"][0]
        print(f"training selection: {first['n']} images, {first['nbytes'] / 2**20:,.0f} MB "
              f"decoded; {BATCH} a batch; MB = MiB")
        print(f"{'mode':<20}{'workers':>8}{'PSS MB':>10}{'x one':>8}{'anon':>8}"
              f"{'decoded file':>14}{'load s':>9}{'epoch 1 s':>11}{'later s':>9}")
        base = {r["mode"]: r["pss"] for r in runs if r["n"] == 1}
        for r in runs:
            loads = [w["load_s"] for w in r["reports"]]
            e1 = statistics.median(w["epoch_s"][0] for w in r["reports"])
            e2 = statistics.median(steady(w) for w in r["reports"])
            one = base["shared"] if r["mode"].startswith("shared") else base[r["mode"]]
            anon = sum(m["Pss_Anon"] for m in r["mem"])
            print(f"{r['mode']:<20}{r['n']:>8}{r['pss']:>10,.0f}{r['pss'] / one:>8.2f}"
                  f"{anon:>8,.0f}{r['decoded']:>14,.0f}{max(loads):>9.2f}{e1:>11.3f}"
                  f"{e2:>9.3f}")
        solo = {r["mode"]: r["reports"][0] for r in runs if r["n"] == 1}
        inproc, shared, there = (solo["in-process"], solo["shared"],
                                 solo["shared, file there"])
        print(f"one worker's load: in-process {inproc['load_s']:.2f} s; shared: first on the "
              f"node (decode + write) {shared['load_s']:.2f} s, file there (map) "
              f"{there['load_s']:.2f} s")
        rate = {k: first["n"] / steady(w) for k, w in solo.items()}
        print(f"one worker's later epochs (median): in-process {rate['in-process']:,.0f} "
              f"images/s, shared {rate['shared']:,.0f} images/s, shared with the file there "
              f"{rate['shared, file there']:,.0f} images/s "
              f"(shared/in-process {rate['shared'] / rate['in-process']:.2f})")
        rounds = 3 if args.quick else 15
        m, c = interleaved(store, Path(tmp) / "cache-shared-1", rounds)
        print(f"later epochs alternating in one process (median of {rounds}): mapped file "
              f"{first['n'] / m:,.0f} images/s, in-memory copy {first['n'] / c:,.0f} images/s "
              f"(mapped/in-memory {c / m:.2f})")
        last, base_last = counts[-1], base_counts[-1]
        by = {(r["mode"], r["n"]): r["pss"] for r in runs}
        print(f"in-process ratio ({base_last} workers / 1): "
              f"{by[('in-process', base_last)] / by[('in-process', 1)]:.2f}")
        print(f"ratio: {by[('shared', last)] / by[('shared', 1)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
