"""One decoded copy of the store per node: ``leukemia.store.shared_selections`` and the trial
workers' ``search.trainable._data`` that maps it.

Real processes load the real sample's store at once and must map one file written once; the
arrays must equal the in-process load; a damaged or stale file must be rebuilt.

    .venv/bin/python -m pytest -q tests/test_store_shared.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leukemia.config import TrainConfig
from leukemia.folds import load_split
from leukemia.store import Selection, Store, StoreError, _map_decoded, shared_selections
from search import trainable
from search.cache import decoded_path

REPO = Path(__file__).resolve().parents[1]


def same(a: Selection, b: Selection) -> bool:
    return (a.images.shape == b.images.shape and np.array_equal(a.images, b.images)
            and np.array_equal(a.labels, b.labels) and np.array_equal(a.folds, b.folds)
            and (a.image_ids == b.image_ids).all() and (a.patient_ids == b.patient_ids).all())


def digest(parts: list[Selection]) -> str:
    h = hashlib.sha256()
    for s in parts:
        for a in (s.images, s.labels, s.folds):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(s.image_ids.tolist() + s.patient_ids.tolist()).encode())
    return h.hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CNMC_CACHE", str(path))
    monkeypatch.setattr(trainable, "_DATA", {})
    return path


def test_store_load_without_pixels_has_the_same_rows(real_store):
    store = Store(real_store)
    full, meta = store.load("training"), store.load("training", pixels=False)
    assert meta.images.shape == (len(full), 0, 0, 3)
    for key in ("labels", "folds", "image_ids", "patient_ids"):
        assert np.array_equal(getattr(meta, key), getattr(full, key))


def test_trial_data_is_mapped_and_equals_in_process_load(real_store, cache):
    train, val = trainable._data(real_store, 0)
    want_train, want_val = load_split(Store(real_store), TrainConfig(val_fold=0))
    assert same(train, want_train) and same(val, want_val)
    assert not train.images.flags.writeable and not val.images.flags.writeable  # mapped
    path = decoded_path(Store(real_store).checksum, 0)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]
    # train then val in one file: one contiguous block each, back to back
    start = train.images.__array_interface__["data"][0]
    assert val.images.__array_interface__["data"][0] >= start + train.images.nbytes


def test_trial_data_without_validation_fold(real_store, cache):
    train, val = trainable._data(real_store, None)
    want, _ = load_split(Store(real_store), TrainConfig(val_fold=None))
    assert val is None and same(train, want)
    assert decoded_path(Store(real_store).checksum, None).is_file()


WORKER = """
import hashlib, json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import leukemia.store as S
from search import trainable
from search.cache import decoded_path

writes = []
real_write = S._write_decoded
def counted(path, tag, sections):
    writes.append(str(path))
    time.sleep(0.5)  # a slow build: the other workers must wait for it, not write their own
    real_write(path, tag, sections)
S._write_decoded = counted

go = Path(sys.argv[2])
while not go.exists():  # start together: concurrent first loads
    time.sleep(0.01)
train, val = trainable._data(sys.argv[1], 0)
h = hashlib.sha256()
for s in (train, val):
    for a in (s.images, s.labels, s.folds):
        h.update(a.tobytes())
    h.update("\\n".join(s.image_ids.tolist() + s.patient_ids.tolist()).encode())
int(train.images.sum()) + int(val.images.sum())  # touch every page of the mapping
path = decoded_path(S.Store(sys.argv[1]).checksum, 0)
print("mapped", flush=True)
sys.stdin.readline()  # every worker has mapped and touched the file: PSS splits it 3 ways
pss = 0
in_file = False
for line in open(f"/proc/{{os.getpid()}}/smaps"):
    head = line.split()
    if head and "-" in head[0] and not head[0].endswith(":"):
        in_file = line.rstrip().endswith(path.name)
    elif in_file and head[0] == "Pss:":
        pss += int(head[1])
print(json.dumps({{"writes": writes, "digest": h.hexdigest(), "inode": path.stat().st_ino,
                  "pss_kb": pss, "rss_bytes": train.images.nbytes + val.images.nbytes}}),
      flush=True)
sys.stdin.readline()  # keep the mapping until the test has read every worker's report
"""


def test_concurrent_workers_write_one_file_and_share_it(real_store, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, CNMC_CACHE=str(cache))
    go = tmp_path / "go"
    script = WORKER.format(repo=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script, real_store, str(go)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        go.touch()
        assert [p.stdout.readline().strip() for p in procs] == ["mapped"] * 3
        for p in procs:  # measure only once all three map it (a page counts 1/N in each)
            p.stdin.write("\n")
            p.stdin.flush()
        reports = [json.loads(p.stdout.readline() or "null") for p in procs]
    finally:
        for p in procs:
            p.communicate("\n", timeout=120)
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    assert sum(len(r["writes"]) for r in reports) == 1  # one build on the node
    assert len({r["inode"] for r in reports}) == 1  # every worker maps that one file
    want = load_split(Store(real_store), TrainConfig(val_fold=0))
    assert {r["digest"] for r in reports} == {digest(list(want))}
    # each page is shared by the 3 mappers: PSS counts a third of it in each
    size_kb = reports[0]["rss_bytes"] / 1024
    total = sum(r["pss_kb"] for r in reports)
    assert 0.9 * size_kb <= total <= 1.5 * size_kb, (total, size_kb)
    assert all(r["pss_kb"] < 0.5 * size_kb for r in reports)
    leftovers = sorted(p.name for p in (cache / "decoded").iterdir())
    assert [n for n in leftovers if ".tmp-" in n] == []


def sections(real_store: str) -> list[Selection]:
    return list(load_split(Store(real_store), TrainConfig(val_fold=0)))


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty", "garbage", "other tag"])
def test_damaged_or_stale_decoded_file_is_rebuilt(real_store, tmp_path, damage, caplog):
    want = sections(real_store)
    builds = []

    def build() -> list[Selection]:
        builds.append(1)
        return want

    path = tmp_path / "decoded" / "x.arrow"
    shared_selections(path, "tag-1", build)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) * 2 // 3])
    elif damage == "zeroed":
        path.write_bytes(bytes(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"ARROW1\0\0" + os.urandom(4096))
    else:
        shared_selections(path, "tag-0", build)  # another selection written at this path
    with pytest.raises(StoreError):
        _map_decoded(path, "tag-1")
    got = shared_selections(path, "tag-1", build)
    assert len(builds) == (3 if damage == "other tag" else 2)
    assert all(same(g, w) for g, w in zip(got, want)) and len(got) == 2
    assert "rebuilding it" in caplog.text
    assert shared_selections(path, "tag-1", build) and len(builds) == (3 if damage ==
                                                                       "other tag" else 2)


def test_leftover_of_a_killed_writer_is_removed(real_store, tmp_path):
    path = tmp_path / "x.arrow"
    tmp = tmp_path / "x.arrow.tmp-deadbeef"
    tmp.write_bytes(b"half a file")
    got = shared_selections(path, "t", lambda: sections(real_store))
    assert not tmp.exists() and len(got) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.arrow", "x.arrow.lock"]


def test_failed_build_leaves_no_file(tmp_path):
    path = tmp_path / "x.arrow"

    def build() -> list[Selection]:
        raise RuntimeError("the store went away")

    with pytest.raises(RuntimeError, match="went away"):
        shared_selections(path, "t", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.arrow.lock"]


def test_trial_data_rebuilds_file_of_another_split(real_store, cache):
    """A file for this store and fold written by code that split the folds otherwise (its
    tag's image ids differ) is rebuilt, not trained on."""
    store = Store(real_store)
    path = decoded_path(store.checksum, 0)
    train, val = load_split(store, TrainConfig(val_fold=0))
    tag = trainable._split_tag(store, 0)
    shared_selections(path, tag.replace("ids=", "ids=0"), lambda: [val, train])  # swapped
    got_train, got_val = trainable._data(real_store, 0)
    assert same(got_train, train) and same(got_val, val)


def test_unusable_cache_folder_falls_back_to_an_own_copy(real_store, tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    got = shared_selections(tmp_path / "file" / "x.arrow", "t", lambda: sections(real_store))
    assert all(same(g, w) for g, w in zip(got, sections(real_store)))
    assert got[0].images.flags.writeable  # the process's own arrays, not a mapping
    assert "keeps its own decoded copy" in caplog.text


@pytest.mark.slow
def test_fit_on_mapped_selections_equals_fit_on_in_process_load(real_store, cache):
    """Real Keras training reads the read-only mapping as it read the in-memory arrays."""
    from leukemia.train import fit

    config = TrainConfig(backbone="small_cnn", image_size=32, batch_size=32, epochs=1,
                         augment=True)
    mapped = fit(config, trainable._data(real_store, 0))
    loaded = fit(config, load_split(Store(real_store), config))
    keys = ("loss", "val_loss", "val_roc_auc", "val_weighted_f1")
    assert [[h.get(k) for k in keys] for h in mapped.history] == \
        [[h.get(k) for k in keys] for h in loaded.history]


def test_tta_prediction_reads_the_mapping(real_store, cache):
    """The 8 flipped/rotated views of a read-only mapped array are made as of any array."""
    import keras

    from leukemia.train import predict_proba

    _, val = trainable._data(real_store, 0)
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    got = predict_proba(model, val.images, tta=True)
    want = predict_proba(model, np.array(val.images), tta=True)
    assert got.shape == (len(val),) and np.allclose(got, want)
