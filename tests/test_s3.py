"""The store on S3 for real: a local S3 server, pyarrow's S3 filesystem, the node-local cache.

A module-scoped moto server (``moto.server.ThreadedMotoServer``) listens on 127.0.0.1 only. Stores
are addressed as a user addresses MinIO or any S3-compatible service,
``s3://BUCKET/KEY?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1``, with the
credentials in the ``AWS_*`` environment variables (which subprocesses and Ray workers inherit).
Stores are seeded by ingesting locally and uploading the two files, as ``aws s3 sync`` would: that
is independent of whether ``ingest`` can write to S3 itself (see
``test_ingest_writes_store_to_s3``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from searchrun import REPO, run, start, stop_group
from searchrun import trials as read_trials

from leukemia.dataset import DatasetError
from leukemia.store import DATA_FILE, MANIFEST, Selection, Store, ingest
from search.cache import local_store

moto_server = pytest.importorskip(
    "moto.server", reason="moto with its server extra is not installed: "
    "pip install 'moto[server]>=5' (in the dev extra) to run the S3 tests on a local S3 server")

BUCKET = "cnmc"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": REGION,
               "AWS_EC2_METADATA_DISABLED": "true"}  # never probe a cloud metadata endpoint


@dataclass(frozen=True)
class S3:
    """The running local S3 server: its ``host:port`` and URIs of keys in :data:`BUCKET`."""

    endpoint: str

    def uri(self, key: str) -> str:
        return (f"s3://{BUCKET}/{key}?endpoint_override={self.endpoint}&scheme=http"
                f"&region={REGION}")

    def keys(self, prefix: str) -> list[str]:
        """Every object key in the bucket that starts with ``prefix``."""
        fs, _ = pafs.FileSystem.from_uri(self.uri(""))
        infos = fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
        return sorted(i.path[len(BUCKET) + 1:] for i in infos
                      if i.path[len(BUCKET) + 1:].startswith(prefix))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server on a free loopback port with an empty bucket; stopped after the module."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CREDENTIALS.items():
            mp.setenv(k, v)
        werkzeug = logging.getLogger("werkzeug")  # one log line per request otherwise
        level = werkzeug.level
        werkzeug.setLevel(logging.WARNING)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            s3 = S3(f"{host}:{port}")
            fs, _ = pafs.FileSystem.from_uri(s3.uri("") + "&allow_bucket_creation=true")
            fs.create_dir(BUCKET)
            yield s3
        finally:
            server.stop()
            werkzeug.setLevel(level)


def upload(local: str | Path, uri: str) -> str:
    """Copy a local store to ``uri`` (what ``aws s3 sync`` does), manifest last; return ``uri``."""
    fs, path = pafs.FileSystem.from_uri(uri)
    for name in (DATA_FILE, MANIFEST):
        pafs.copy_files(str(Path(local) / name), f"{path}/{name}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return uri


@pytest.fixture
def s3_store(s3: S3, make_tree: Callable[..., Path], tmp_path: Path) -> tuple[str, Store]:
    """A 32 px store of a generated tree, ingested locally and uploaded: ``(uri, local store)``."""
    local = tmp_path / "local-store"
    ingest(make_tree("seed", per_class=3), str(local), size=32, workers=1, progress=False)
    return upload(local, s3.uri(tmp_path.name)), Store(local)


def assert_same(a: Selection, b: Selection) -> None:
    np.testing.assert_array_equal(a.image_ids, b.image_ids)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.folds, b.folds)
    np.testing.assert_array_equal(a.patient_ids, b.patient_ids)


def leftovers(s3: S3, key: str) -> list[str]:
    """Objects an ingest left behind: temporary or moved-aside folders beside the store, and
    data files in it that its manifest does not point at."""
    keys = s3.keys(key)
    aside = [k for k in keys if k.startswith((f"{key}.tmp-", f"{key}.old-"))]
    current = Store(s3.uri(key)).data_file if f"{key}/{MANIFEST}" in keys else None
    orphans = [k for k in keys if k.startswith(f"{key}/images") and k != f"{key}/{current}"]
    return aside + orphans


# ---------------------------------------------------------------------------------------------
# leukemia.store on S3


def test_store_reads_real_sample_from_s3(s3, real_store, tmp_path):
    uri = upload(real_store, s3.uri(tmp_path.name))
    remote, local = Store(uri), Store(real_store)
    assert remote.manifest == local.manifest
    assert remote.checksum == local.checksum
    for split, folds in (("training", None), ("validation", None), ("training", [1, 2]),
                         (None, None)):
        got = remote.load(split, folds)
        assert len(got) > 0
        assert_same(got, local.load(split, folds))


def test_ingest_writes_store_to_s3(s3, make_tree, tmp_path):
    tree = make_tree(per_class=3)
    uri = s3.uri(tmp_path.name)
    manifest = ingest(tree, uri, size=32, workers=1, progress=False)
    local = ingest(tree, str(tmp_path / "local"), size=32, workers=1, progress=False)
    remote = Store(uri)
    assert remote.checksum == manifest["content_checksum"] == local["content_checksum"]
    assert_same(remote.load("training"), Store(tmp_path / "local").load("training"))
    assert_same(remote.load("validation"), Store(tmp_path / "local").load("validation"))
    assert leftovers(s3, tmp_path.name) == []


def test_ingest_bad_file_keeps_s3_store(s3, s3_store, make_tree, tmp_path):
    uri, local = s3_store
    tree = make_tree("bad")
    bad = tree / "training_data/fold_1/all/UID_11_0_1_all.bmp"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated BMP
    with pytest.raises(DatasetError, match="not a readable image"):
        ingest(tree, uri, size=32, workers=1, progress=False)
    assert Store(uri).checksum == local.checksum
    assert_same(Store(uri).load("training"), local.load("training"))
    assert leftovers(s3, tmp_path.name) == []


def test_ingest_replace_keeps_s3_store_whole(s3, s3_store, make_tree, tmp_path):
    """Re-ingesting other data over an S3 store replaces it whole; the old data is removed."""
    uri, local = s3_store
    new = ingest(make_tree("new", per_class=2), str(tmp_path / "new-local"), size=32, workers=1,
                 progress=False)
    assert new["content_checksum"] != local.checksum
    ingest(make_tree("new2", per_class=2), uri, size=32, workers=1, progress=False)
    store = Store(uri)
    assert store.checksum == new["content_checksum"]
    assert_same(store.load(None), Store(tmp_path / "new-local").load(None))
    assert leftovers(s3, tmp_path.name) == []  # the old store's data file is gone


# ---------------------------------------------------------------------------------------------
# search.cache on S3


def test_local_store_downloads_once(s3_store, tmp_path, monkeypatch):
    uri, local = s3_store
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNMC_CACHE", str(cache))
    first = local_store(uri)
    assert Path(first) == cache / "stores" / local.checksum
    log = (cache / "downloads.log").read_text().splitlines()
    assert len(log) == 1
    assert log[0].split("\t")[2:4] == [uri, local.checksum]
    assert local_store(uri) == first
    assert (cache / "downloads.log").read_text().splitlines() == log
    copy = Store(first)
    assert copy.manifest == Store(uri).manifest
    assert_same(copy.load(None), Store(uri).load(None))
    assert sorted(p.name for p in (cache / "stores").iterdir()) == [
        local.checksum, f"{local.checksum}.lock"]  # no partial copy left


CHILD = """
import sys, time
from pathlib import Path
from search.cache import local_store
ready, go, uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.005)
print(local_store(uri))
"""


def test_local_store_concurrent_processes_download_once(s3_store, tmp_path):
    uri, local = s3_store
    cache = tmp_path / "cache"
    env = dict(os.environ, CNMC_CACHE=str(cache))
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(r), str(go), uri], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in ready]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):  # imports done: all call local_store at once
            assert time.monotonic() < deadline, "the child processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(cache / "stores" / local.checksum)}
    assert len((cache / "downloads.log").read_text().splitlines()) == 1
    assert_same(Store(paths.pop()).load(None), local.load(None))


# ---------------------------------------------------------------------------------------------
# The search on an S3 store


@pytest.mark.slow
def test_search_on_s3_store_downloads_once_per_node(s3_store, tmp_path):
    uri, local = s3_store
    out = tmp_path / "out"
    # one argv element per argument, no shell: the URI's ? and & reach run.py as they are; the
    # AWS_* variables set by the s3 fixture reach run.py and its Ray workers through os.environ
    run(["--store", uri, "--trials", "2", "--max-epochs", "1", "--grace-period", "1",
         "--image-size", "32", "--batch-size", "8", "--backbones", "small_cnn", "--no-final",
         "--num-cpus", "2", "--out", str(out)], tmp_path)
    trials = read_trials(out)
    assert len(trials) == 2
    assert {t["status"] for t in trials} == {"completed"}, trials
    nodes = json.loads((out / "summary.json").read_text())["nodes"]
    assert [n["trials"] for n in nodes.values()] == [2], nodes
    log = (tmp_path / "cache" / "downloads.log").read_text().splitlines()
    assert len(log) == 1, log  # two trials, one node: the store was read from S3 once
    assert log[0].split("\t")[2:4] == [uri, local.checksum]


@pytest.mark.slow
def test_search_writes_its_results_to_s3(s3, s3_store, tmp_path):
    """--out s3://...: Ray keeps trial state there, the rest is uploaded at the end, and the
    same command refuses to overwrite the search it finds there."""
    uri, _ = s3_store
    out = s3.uri(f"{tmp_path.name}-run")
    args = ["--store", uri, "--trials", "2", "--max-epochs", "1", "--grace-period", "1",
            "--image-size", "32", "--batch-size", "8", "--backbones", "small_cnn",
            "--num-cpus", "2", "--out", out]
    run(args, tmp_path)
    keys = s3.keys(f"{tmp_path.name}-run/")
    for name in ("trials.csv", "study.db", "summary.json", "report.html", "best/model.keras",
                 "best/metrics.json", "tune/tuner.pkl"):
        assert f"{tmp_path.name}-run/{name}" in keys, keys
    assert sum(k.endswith("/result.json") for k in keys) == 2
    fs, path = pafs.FileSystem.from_uri(out)
    with fs.open_input_stream(f"{path}/best/metrics.json") as fh:
        assert json.loads(fh.read())["n"] > 0
    proc = start(args, tmp_path)
    proc.wait(timeout=300)
    stop_group(proc)
    assert proc.returncode == 2 and "already holds a search" in proc.log.read_text()
