"""Files written whole or not at all: :func:`atomic_write`, and :func:`write_history` (CSV).

A file is written under a unique temporary name in its own folder and renamed into place, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one.

    from leukemia.files import atomic_write
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary name in the same folder, so it is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened with "x", not mkstemp: os.replace would keep mkstemp's 0600 mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("xb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_history(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Write per-epoch metrics as CSV (columns: the union of the epochs' keys)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write(path, buf.getvalue())
