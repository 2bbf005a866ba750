"""The Parquet image store: built once from a C-NMC folder, read by every trial.

A store is a folder (local, NFS/EFS, or any URI ``pyarrow.fs`` understands: ``s3://``,
``gs://``) holding ``images.parquet`` and ``manifest.json``. Each row is one image: metadata
columns plus ``image``, the decoded RGB pixels (uint8, ``size x size x 3``) as one zstd-compressed
``fixed_size_binary`` value, so reading a selection back is a Parquet decode plus
``np.frombuffer`` on the column buffer: no per-image decoding.

Ingest (``leukemia ingest DATA --store STORE``) decodes the images on all cores, crops and
resizes each (:mod:`leukemia.imaging`: by default a 320 px window of the frame centred on the
cell, so cells keep their real size, a morphological cue: blasts are larger), and writes the
store whole or not at all; an earlier store survives a failed ingest. A folder without a
manifest is not a store.

Processes on one machine share one decoded copy of a selection through
:func:`shared_selections`: an uncompressed Arrow IPC file written once, memory-mapped by each.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from leukemia import dataset
from leukemia.dataset import DatasetError, Record
from leukemia.imaging import DEFAULT_CROP, DEFAULT_SIZE, check_crop, preprocess_frame, read_frame

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATA_FILE = "images.parquet"
MANIFEST = "manifest.json"
ROW_GROUP = 128  # rows per Parquet row group: small enough to skip unselected folds cheaply
_META = ("image_id", "split", "fold", "patient_id", "label", "original_name")
# one decoded image: (error, pixels, source height, source width, file sha256, pixels sha256,
# conversion notes)
_Decoded = tuple[str | None, bytes, int, int, str, str, tuple[str, ...]]


class StoreError(ValueError):
    """The store is missing, incomplete or does not hold what was asked for."""


def _decode_task(args: tuple[str, int, str, int | None]) -> _Decoded:
    path, size, crop, window = args
    try:
        raw = Path(path).read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        frame = read_frame(path, raw)
        img = frame.rgb
        # duplicates are judged by decoded pixels: one cell re-saved has other file bytes
        pixels_sha = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
        pixels = preprocess_frame(img, size, crop, window)
        return (None, pixels.tobytes(), img.shape[0], img.shape[1], sha, pixels_sha,
                tuple(f"{path}: {note}" for note in frame.notes))
    except (OSError, ValueError) as e:
        return f"{path}: {e}", b"", 0, 0, "", "", ()


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or any URI pyarrow.fs understands."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def fs_selector(path: str) -> pafs.FileSelector:
    return pafs.FileSelector(path, allow_not_found=True)


class Progress:
    """A progress meter on stderr (quiet when ``enabled`` is false).

    On a terminal it redraws one line in place at most every ``tty_every`` seconds; in a log it
    writes a whole line at most every ``log_every`` seconds. The last update ends the line.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, *, stream: Any = None,
                 tty_every: float = 0.5, log_every: float = 5.0) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = tty_every if self.tty else log_every
        self.start = self._last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < self.every and done < self.total):
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        text = f"{self.label}: {done}/{self.total} ({rate:,.0f}/s)"
        if self.tty:  # back to the line's start, clear to its end
            text = f"\r{text}\x1b[K" + ("\n" if done >= self.total else "")
        else:
            text += "\n"
        self.stream.write(text)
        self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Ingest


def _schema(size: int) -> pa.Schema:
    return pa.schema([
        ("image_id", pa.string()), ("split", pa.string()), ("fold", pa.int8()),
        ("patient_id", pa.string()), ("label", pa.int8()), ("original_name", pa.string()),
        ("height", pa.int16()), ("width", pa.int16()),
        ("source_height", pa.int16()), ("source_width", pa.int16()),
        ("source_sha256", pa.string()), ("image", pa.binary(size * size * 3)),
    ])


def _duplicates(records: Sequence[Record], shas: Sequence[str]
                ) -> tuple[list[list[str]], list[str]]:
    """Groups of images with identical decoded pixels, and warnings for those that cross splits
    or patients (names included).

    Raises:
        DatasetError: one image carries two labels (the files name both).
    """
    by_sha: dict[str, list[Record]] = defaultdict(list)
    for r, s in zip(records, shas):
        by_sha[s].append(r)
    groups, warnings, conflicts = [], [], []
    for group in by_sha.values():
        if len(group) < 2:
            continue
        groups.append([r.image_id for r in group])
        names = ", ".join(f"{r.image_id} ({r.original_name})" for r in group)
        if len({r.label for r in group}) > 1:
            conflicts.append(names)
            continue
        splits, patients = {r.split for r in group}, {r.patient_id for r in group}
        if len(splits) > 1 or len(patients) > 1:
            where = " and ".join(w for w, n in (("splits", splits), ("patients", patients))
                                 if len(n) > 1)
            warnings.append(f"identical image (same decoded pixels) in two {where}: {names}")
    if conflicts:
        raise DatasetError(f"{len(conflicts)} image(s) saved more than once with different "
                           "labels (identical decoded pixels); remove the wrong copy:\n  "
                           + "\n  ".join(conflicts))
    return groups, warnings


def _counts(records: Iterable[Record]) -> dict[str, Any]:
    by_split: dict[str, Counter] = defaultdict(Counter)
    by_fold: dict[str, Counter] = defaultdict(Counter)
    patients: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        cls = "all" if r.label else "hem"
        by_split[r.split][cls] += 1
        if r.fold is not None:
            by_fold[str(r.fold)][cls] += 1
        patients[r.split][r.patient_id] += 1
    return {
        "splits": {s: {"n": sum(c.values()), **c} for s, c in sorted(by_split.items())},
        "folds": {f: {"n": sum(c.values()), **c} for f, c in sorted(by_fold.items())},
        "patients": {s: dict(sorted(p.items())) for s, p in sorted(patients.items())},
    }


def ingest(data_dir: str | Path, store: str, *, size: int = DEFAULT_SIZE,
           workers: int | None = None, crop: str | bool = DEFAULT_CROP,
           window: int | None = None, skip_bad: bool = False,
           overwrite: bool = True, progress: bool = True) -> dict[str, Any]:
    """Build a Parquet image store from a C-NMC dataset folder.

    Args:
        data_dir: the ``C-NMC_Leukemia`` folder or its parent.
        store: destination folder or URI; replaced atomically if it exists and ``overwrite``.
        size: side of the stored square images in pixels.
        workers: decoding processes (default: all cores).
        crop: ``"window"`` (a ``window`` px square of the frame centred on the cell, so
            cells keep their size), ``"cell"`` (each cell's bounding square, so every cell
            fills the image) or ``"none"`` (the whole frame); then resized to ``size``.
        window: side of the window crop in px of the original frame (default 320).
        skip_bad: skip unreadable images (recorded in the manifest) instead of failing.
        overwrite: replace an existing store at ``store``.
        progress: show a progress line on stderr.

    Returns:
        The manifest that was written.

    Raises:
        DatasetError: the folder or some files are bad (every bad file is listed).
        StoreError: a store exists and ``overwrite`` is false.
    """
    if size < 8 or size > 4096:
        raise ValueError(f"size={size}: the stored image side must be between 8 and 4096 px")
    crop, window = check_crop(crop, window)
    t0 = time.monotonic()
    scanned = dataset.scan(data_dir)
    if not scanned.records:
        raise DatasetError(f"{scanned.root}: no images found")
    fs, path = _fs(store)
    _recover(fs, path)
    if _exists(fs, path):
        if not overwrite:
            raise StoreError(f"{store} exists; remove it or leave out --no-overwrite to replace "
                             "it")
        if not _exists(fs, f"{path}/{MANIFEST}") and fs.get_file_info(fs_selector(path)):
            raise StoreError(f"{store} exists and is not an image store (no {MANIFEST}); "
                             "refusing to replace it: choose an empty or new --store path")
    workers = max(1, workers or os.cpu_count() or 1)

    tasks = [(r.source_path, size, crop, window) for r in scanned.records]
    meter = Progress(len(tasks), "ingest", progress)
    results = []
    with ExitStack() as stack:
        decoded: Iterator[_Decoded] = map(_decode_task, tasks)
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            decoded = pool.map(_decode_task, tasks,
                               chunksize=max(1, min(64, len(tasks) // (workers * 8))))
        for i, res in enumerate(decoded, 1):
            results.append(res)
            meter.update(i)

    bad = [err for err, *_ in results if err]
    if bad and not skip_bad:
        raise DatasetError(f"{len(bad)} image file(s) cannot be read; replace them or pass "
                           "--skip-bad to leave them out:\n  " + "\n  ".join(bad))
    keep = [(r, res) for r, res in zip(scanned.records, results) if res[0] is None]
    records = [r for r, _ in keep]
    duplicates, warnings = _duplicates(records, [res[5] for _, res in keep])
    conversions = [note for _, res in keep for note in res[6]]  # grayscale, 16-bit
    for msg in conversions + warnings:
        log.warning(msg)

    # A local disk or NFS: build the store aside and rename it into place. An object store (S3,
    # GCS) cannot rename a folder: the data goes to a new, uniquely named object and the
    # manifest (one PUT, atomic) is the commit, so readers see the old store or the new one.
    local = isinstance(fs, pafs.LocalFileSystem)
    folder = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    data_file = DATA_FILE if local else f"images-{uuid.uuid4().hex[:12]}.parquet"
    fs.create_dir(folder, recursive=True)
    try:
        checksum = _write_images(fs, f"{folder}/{data_file}", keep, size, crop, window)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(scanned.root),
            "image_size": size,
            "crop": crop,
            "window": window,
            "n_images": len(records),
            **_counts(records),
            "missing_validation": len(scanned.missing_validation),
            "skipped_bad_files": bad,
            "duplicates": duplicates,
            "duplicate_warnings": warnings,
            "conversions": conversions,
            "notes": scanned.notes,
            "data_file": data_file,
            "content_checksum": checksum,
            "ingest_seconds": round(time.monotonic() - t0, 2),
        }
        with fs.open_output_stream(f"{folder}/{MANIFEST}") as fh:
            fh.write(json.dumps(manifest, indent=2).encode())
        if local:
            _swap_into_place(fs, folder, path)
    except BaseException:
        partial = folder if local else f"{path}/{data_file}"
        if _exists(fs, partial):
            (fs.delete_dir if local else fs.delete_file)(partial)
        raise
    if not local:
        for info in fs.get_file_info(fs_selector(path)):  # earlier and failed ingests' data
            if info.base_name.startswith("images") and info.base_name != data_file:
                fs.delete_file(info.path)
    return manifest


def _write_images(fs: pafs.FileSystem, file_path: str, keep: list[tuple[Record, _Decoded]],
                  size: int, crop: str, window: int | None) -> str:
    """Write the decoded images as Parquet row groups; return the content checksum."""
    schema = _schema(size)
    checksum = hashlib.sha256(f"v{SCHEMA_VERSION}:{size}:{crop}:{window}".encode())
    # zstd level 1 decodes ~15% faster than level 3 here (7.3 vs 8.5 ms for 240 images at 128 px)
    # for files ~14% larger; LZ4 decodes 2x faster but makes files 37% larger than zstd-3.
    with fs.open_output_stream(file_path) as sink, \
            pq.ParquetWriter(sink, schema, compression="zstd", compression_level=1) as writer:
        for start in range(0, len(keep), ROW_GROUP):
            group = keep[start:start + ROW_GROUP]
            cols: dict[str, list] = {k: [getattr(r, k) for r, _ in group] for k in _META}
            cols.update(height=[size] * len(group), width=[size] * len(group),
                        source_height=[res[2] for _, res in group],
                        source_width=[res[3] for _, res in group],
                        source_sha256=[res[4] for _, res in group],
                        image=[res[1] for _, res in group])
            for r, res in group:
                checksum.update(f"{r.image_id}:{r.label}:{r.fold}:{res[4]}\n".encode())
            writer.write_table(pa.table(cols, schema=schema), row_group_size=ROW_GROUP)
    return checksum.hexdigest()


def _recover(fs: pafs.FileSystem, path: str) -> None:
    """Undo what a killed ingest left: restore a moved-aside store, drop partial copies."""
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    if not parent or not _exists(fs, parent):
        return
    leftovers = [i.path for i in fs.get_file_info(fs_selector(parent))
                 if i.base_name.startswith((f"{name}.tmp-", f"{name}.old-"))]
    for old in (p for p in leftovers if ".old-" in p.rsplit("/", 1)[-1]):
        if not _exists(fs, f"{path}/{MANIFEST}") and _exists(fs, f"{old}/{MANIFEST}"):
            if _exists(fs, path):
                fs.delete_dir(path)
            fs.move(old, path)
            log.warning("restored the store %s that an interrupted ingest had moved aside", path)
        else:
            fs.delete_dir(old)
    for tmp in (p for p in leftovers if ".tmp-" in p.rsplit("/", 1)[-1]):
        log.info("removing %s left by an interrupted ingest", tmp)
        fs.delete_dir(tmp)


def _swap_into_place(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """Move the finished ``tmp`` folder to ``path``, keeping any old store until it succeeds."""
    old = f"{path}.old-{uuid.uuid4().hex[:8]}" if _exists(fs, path) else None
    if old is not None:
        fs.move(path, old)
    try:
        fs.move(tmp, path)
    except BaseException:
        if old is not None:
            fs.move(old, path)
        raise
    if old is not None:
        fs.delete_dir(old)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class Selection:
    """Images and metadata of a store selection, as numpy arrays (one entry per image)."""

    images: np.ndarray  # (n, size, size, 3) uint8 RGB
    labels: np.ndarray  # (n,) int8: 1 = ALL, 0 = normal
    patient_ids: np.ndarray  # (n,) str
    image_ids: np.ndarray  # (n,) str
    folds: np.ndarray  # (n,) int8, -1 for validation

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> Selection:
        """Return the rows where ``mask`` is true."""
        return Selection(**{k: v[mask] for k, v in asdict(self).items()})


class Store:
    """A read handle on a Parquet image store (local path or URI)."""

    def __init__(self, uri: str | Path) -> None:
        self.uri = str(uri)
        self.fs, self.path = _fs(self.uri)
        mpath = f"{self.path}/{MANIFEST}"
        if not _exists(self.fs, mpath):
            hint = ("an ingest did not finish" if _exists(self.fs, self.path)
                    else "nothing is there")
            raise StoreError(f"{self.uri} is not an image store ({MANIFEST} missing: {hint}); "
                             "build one with `leukemia ingest DATA_DIR --store STORE`")
        try:
            with self.fs.open_input_stream(mpath) as fh:
                self.manifest: dict[str, Any] = json.loads(fh.read())
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.uri}/{MANIFEST}: not valid JSON ({e})") from e
        if self.manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{self.uri}: schema version {self.manifest.get('schema_version')} "
                             f"but this code reads {SCHEMA_VERSION}; re-run `leukemia ingest`")

    @property
    def data_file(self) -> str:
        """Name of the Parquet file the manifest points at."""
        return str(self.manifest.get("data_file", DATA_FILE))

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def crop(self) -> tuple[str, int | None]:
        """``(mode, window)`` the images were cropped with at ingest."""
        return check_crop(self.manifest.get("crop", True), self.manifest.get("window"))

    @property
    def checksum(self) -> str:
        return str(self.manifest["content_checksum"])

    def load(self, split: str | None = dataset.TRAINING,
             folds: Sequence[int] | None = None, *, pixels: bool = True) -> Selection:
        """Load a split (and, for training, some folds) into numpy arrays.

        Args:
            split: ``"training"``, ``"validation"``, or None for every image in the store.
            folds: training folds to keep (default: all).
            pixels: False reads the metadata only (milliseconds): ``images`` is then an empty
                ``(n, 0, 0, 3)`` array.

        Raises:
            StoreError: the selection is empty.
        """
        if split not in (dataset.TRAINING, dataset.VALIDATION, None):
            raise ValueError(f"split={split!r}: expected 'training', 'validation' or None")
        filters: list[tuple[str, str, Any]] = [("split", "=", split)] if split else []
        if folds is not None:
            filters.append(("fold", "in", [int(f) for f in folds]))
        with self.fs.open_input_file(f"{self.path}/{self.data_file}") as fh:
            # rows are ordered by split and fold, so row-group statistics skip the rest
            table = pq.read_table(fh, filters=filters or None,
                                  columns=[*_META, "image"] if pixels else list(_META))
        if table.num_rows == 0:
            raise StoreError(f"{self.uri}: no images with split={split!r} folds={folds}; "
                             f"the store has {self.manifest['splits']} and folds "
                             f"{sorted(self.manifest['folds'])}")
        images = (_pixels(table.column("image").combine_chunks(), self.image_size) if pixels
                  else np.empty((table.num_rows, 0, 0, 3), np.uint8))
        return _selection(table, images)


def _selection(rows: pa.Table | pa.RecordBatch, images: np.ndarray) -> Selection:
    """The Selection of ``rows`` (a Parquet table or a decoded batch) with these pixels."""
    return Selection(
        images=images,
        labels=rows.column("label").to_numpy().astype(np.int8),
        patient_ids=np.asarray(rows.column("patient_id").to_pylist(), dtype=str),
        image_ids=np.asarray(rows.column("image_id").to_pylist(), dtype=str),
        folds=rows.column("fold").fill_null(-1).to_numpy().astype(np.int8),
    )


def _pixels(col: pa.Array, size: int) -> np.ndarray:
    """The ``(n, size, size, 3)`` uint8 view (no copy) of a ``fixed_size_binary`` image column."""
    n, nbytes = len(col), size * size * 3
    if n == 0:
        return np.empty((0, size, size, 3), np.uint8)
    return np.frombuffer(col.buffers()[1], dtype=np.uint8, count=n * nbytes,
                         offset=col.offset * nbytes).reshape(n, size, size, 3)


# ---------------------------------------------------------------------------------------------
# One decoded copy per node

DECODED_VERSION = 1  # layout of the decoded file; a file of another version is rebuilt
_DECODED_KEY = b"cnmc_decoded"


def shared_selections(path: str | Path, tag: str,
                      build: Callable[[], Sequence[Selection]]) -> list[Selection]:
    """Selections memory-mapped read-only from one decoded file that every process shares.

    The file at ``path`` (node-local disk) is an uncompressed Arrow IPC file holding each
    selection ``build`` returns as one record batch: every process that maps it shares one
    copy of the pixels in the page cache instead of decoding its own. The first caller builds
    it under the lock ``<path>.lock`` (concurrent first callers wait for that one build) and
    renames it into place. A file that is not a whole Arrow IPC file, or records another
    ``tag`` or version, is rebuilt; it is not hashed on every open (a second per GB): the
    atomic write is what keeps it whole.

    Args:
        path: the decoded file.
        tag: what the file must hold (e.g. the store's checksum and the split).
        build: makes the selections when the file is missing or stale (in this process).

    Returns:
        The selections, in ``build``'s order, with read-only ``images`` (``build``'s own, in
        this process's memory, when the cache folder cannot be written: a warning says so).
    """
    path = Path(path)
    try:
        return _map_decoded(path, tag)
    except FileNotFoundError:
        pass
    except StoreError as e:
        log.warning("%s; rebuilding it", e)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(f"{path}.lock", "a")
    except OSError as e:
        log.warning("cannot use %s (%s): this process keeps its own decoded copy", path, e)
        return list(build())
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or when this process dies
        try:
            return _map_decoded(path, tag)  # another process built it while this one waited
        except (FileNotFoundError, StoreError):
            pass
        for tmp in path.parent.glob(f"{path.name}.tmp-*"):  # left by a killed writer
            tmp.unlink(missing_ok=True)
        t0 = time.monotonic()
        sections = build()
        try:
            _write_decoded(path, tag, sections)
        except OSError as e:  # a full or read-only cache disk: train as before, unshared
            log.warning("cannot write %s (%s): this process keeps its own decoded copy", path,
                        e)
            return list(sections)
        del sections
        pa.default_memory_pool().release_unused()  # the decoded copy is in the file now
        log.info("wrote the decoded selections %s (%.1f MB) in %.1f s", path,
                 path.stat().st_size / 1e6, time.monotonic() - t0)
    return _map_decoded(path, tag)


def _decoded_schema(size: int, meta: dict[str, Any]) -> pa.Schema:
    return pa.schema([("image", pa.binary(size * size * 3)), ("label", pa.int8()),
                      ("patient_id", pa.string()), ("image_id", pa.string()),
                      ("fold", pa.int8())], metadata={_DECODED_KEY: json.dumps(meta)})


def _write_decoded(path: Path, tag: str, sections: Sequence[Selection]) -> None:
    """Write ``sections`` as the record batches of an uncompressed Arrow IPC file, atomically.

    Not fsynced: a file a crash left incomplete fails :func:`_map_decoded`'s checks and is
    rebuilt."""
    if not sections:
        raise ValueError("no selections to write")
    size = int(sections[0].images.shape[1])
    meta = {"version": DECODED_VERSION, "tag": tag, "image_size": size,
            "rows": [len(s) for s in sections]}
    schema = _decoded_schema(size, meta)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for sel in sections:
                images = np.ascontiguousarray(sel.images)
                assert images.shape[1:] == (size, size, 3), images.shape
                col = pa.Array.from_buffers(schema.field("image").type, len(sel),
                                            [None, pa.py_buffer(images)])
                writer.write_batch(pa.record_batch(
                    [col, pa.array(sel.labels, pa.int8()),
                     pa.array(sel.patient_ids.tolist(), pa.string()),
                     pa.array(sel.image_ids.tolist(), pa.string()),
                     pa.array(sel.folds, pa.int8())], schema=schema))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _map_decoded(path: Path, tag: str) -> list[Selection]:
    """Map a decoded file.

    Raises:
        FileNotFoundError: there is none.
        StoreError: it is not a whole decoded file, or holds something other than ``tag``.
    """
    try:
        with pa.memory_map(str(path), "r") as source:  # the buffers keep the mapping alive
            reader = pa.ipc.open_file(source)
            meta = json.loads((reader.schema.metadata or {})[_DECODED_KEY])
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            for b in batches:
                b.validate()  # buffer sizes against the lengths: cheap, reads no pixels
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, KeyError, ValueError) as e:
        raise StoreError(f"{path}: not a whole decoded file ({type(e).__name__}: {e})") from e
    if meta.get("version") != DECODED_VERSION or meta.get("tag") != tag:
        raise StoreError(f"{path}: holds {meta.get('tag')!r} (version {meta.get('version')}), "
                         f"not {tag!r} (version {DECODED_VERSION})")
    size = int(meta["image_size"])
    if (reader.schema.remove_metadata() != _decoded_schema(size, {}).remove_metadata()
            or [b.num_rows for b in batches] != meta["rows"]):
        raise StoreError(f"{path}: its columns or row counts are not the ones recorded "
                         f"({meta['rows']})")
    return [_selection(b, _pixels(b.column("image"), size)) for b in batches]


def crop_text(manifest: dict[str, Any]) -> str:
    """``window 320 px`` / ``cell`` / ``none`` for a manifest (old ones hold a bool)."""
    mode, window = check_crop(manifest.get("crop", True), manifest.get("window"))
    return f"window {window} px" if mode == "window" else mode


def describe(manifest: dict[str, Any]) -> str:
    """A human-readable summary of a store's manifest."""
    lines = [f"image store: {manifest['n_images']} images, {manifest['image_size']} px, "
             f"crop={crop_text(manifest)}, schema v{manifest['schema_version']}",
             f"source: {manifest['source']}",
             f"checksum: {manifest['content_checksum'][:16]}"]
    for split, c in manifest["splits"].items():
        npat = len(manifest["patients"].get(split, {}))
        lines.append(f"  {split:<10} {c['n']:>6}  (all {c.get('all', 0)}, hem {c.get('hem', 0)}; "
                     f"{npat} patients)")
        if split == dataset.TRAINING:
            for fold, fc in manifest["folds"].items():
                lines.append(f"    fold {fold}    {fc['n']:>6}  (all {fc.get('all', 0)}, "
                             f"hem {fc.get('hem', 0)})")
    if manifest.get("missing_validation"):
        lines.append(f"  validation rows of the labels CSV without an image on disk: "
                     f"{manifest['missing_validation']}")
    lines += [f"  same pixels saved twice: {', '.join(group)}"
              for group in manifest.get("duplicates") or []]
    lines += [f"  {key.replace('_', ' ')}: {item}"
              for key in ("skipped_bad_files", "duplicate_warnings", "conversions", "notes")
              for item in manifest.get(key) or []]
    return "\n".join(lines)
