"""Node-local copy of a remote image store, so each node downloads it once per search.

A store on ``s3://``/``gs://`` (any non-local ``pyarrow.fs`` URI) is copied to
``$CNMC_CACHE/stores/<content checksum>/`` the first time a trial on that node needs it; later
trials on the node (in any worker process) open the local copy. Concurrent trials on one node
are serialised by a file lock, and the copy is renamed into place only when complete. Local and
shared-filesystem paths (NFS/EFS) are used as they are: the kernel's page cache already makes
repeated reads cheap. Each download appends a line to ``downloads.log`` in the cache folder.

The decoded selection a trial trains on is kept once per node too, as an uncompressed file
under ``$CNMC_CACHE/decoded/`` (:func:`decoded_path`) that every trial worker on the node
memory-maps (``leukemia.store.shared_selections``): the workers share one copy of the pixels
instead of holding one each. Each is as large as the decoded images (about 150 KB a cell at
224 px); delete the folder to reclaim the space.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from leukemia.store import MANIFEST, Store


def cache_root() -> Path:
    """``$CNMC_CACHE`` or ``~/.cache/cnmc-search``."""
    return Path(os.environ.get("CNMC_CACHE", Path.home() / ".cache" / "cnmc-search"))


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_store(uri: str) -> str:
    """A path on this node holding the store at ``uri`` (downloaded once if remote)."""
    if not is_remote(uri):
        return uri
    remote = Store(uri)
    checksum = remote.checksum
    root = cache_root() / "stores"
    dest = root / checksum
    if (dest / MANIFEST).is_file():
        return str(dest)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{checksum}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / MANIFEST).is_file():  # another process finished the copy while we waited
            return str(dest)
        t0 = time.monotonic()
        tmp = root / f".{checksum}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        fs, path = pafs.FileSystem.from_uri(uri)
        for name in (remote.data_file, MANIFEST):  # manifest last: it marks the copy complete
            pafs.copy_files(f"{path}/{name}", str(tmp / name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, dest)
        size = (dest / remote.data_file).stat().st_size
        with open(cache_root() / "downloads.log", "a") as log:
            log.write(f"{time.time():.0f}\t{socket.gethostname()}\t{uri}\t{checksum}\t{size}\t"
                      f"{time.monotonic() - t0:.2f}\n")
    return str(dest)


def decoded_path(checksum: str, val_fold: int | None) -> Path:
    """The node-local decoded file of a store's training split held out at ``val_fold``."""
    fold = "all" if val_fold is None else str(val_fold)
    return cache_root() / "decoded" / f"{checksum}-val{fold}.arrow"
