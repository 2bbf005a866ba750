"""Tests for the exported classifier (``leukemia.models.export_model``): test-time augmentation
inside the model, the ensemble's save -> load -> predict round trip, the metadata it carries,
and model files that cannot be read.

Random-init ``small_cnn`` members on real cells of the 64 px sample store: a few seconds.

    .venv/bin/python -m pytest -q tests/test_export.py
"""

from __future__ import annotations

import numpy as np
import pytest

from leukemia.models import SPEC_LAYER, create_backbone, export_model, load_model, model_spec
from leukemia.store import Store
from leukemia.train import predict_proba, save_model

SIZE = 64  # the sample store's side: the members take its images as they are


def _members(n: int, size: int = SIZE) -> list:
    """``n`` small_cnn classifiers with different random weights.

    A fresh network scores every cell within ~1e-3 of 0.5; the output unit's weights are
    scaled up so that P(ALL) spreads over (0, 1) and orientation moves it visibly, as it does
    in a trained model (up to 0.57 on a real cell).
    """
    import keras

    out = []
    for i in range(n):
        keras.utils.set_random_seed(100 + i)
        m = create_backbone("small_cnn", image_size=size, dropout=0.0)
        head = m.get_layer("p_all")
        w, b = head.get_weights()
        head.set_weights([w * 200.0, b])
        out.append(m)
    return out


def _views(x: np.ndarray) -> dict[str, np.ndarray]:
    """The 8 orientations of a (N, S, S, 3) batch: rotations by 0/90/180/270 degrees, flips."""
    views = {f"rot{90 * k}": np.rot90(x, k, axes=(1, 2)) for k in range(4)}
    views |= {"flip_lr": x[:, :, ::-1], "flip_ud": x[:, ::-1],
              "transpose": x.transpose(0, 2, 1, 3),
              "anti_transpose": np.rot90(x, 2, axes=(1, 2)).transpose(0, 2, 1, 3)}
    return {k: np.ascontiguousarray(v) for k, v in views.items()}


@pytest.fixture(scope="module")
def cells(real_store) -> np.ndarray:
    """Eight real training cells (uint8 RGB, 64 px), both classes."""
    data = Store(real_store).load("training")
    pick = np.r_[np.flatnonzero(data.labels == 1)[:4], np.flatnonzero(data.labels == 0)[:4]]
    return data.images[pick]


# ---------------------------------------------------------------------------------------------
# test-time augmentation


def test_export_tta_scores_every_rotation_and_flip_of_a_cell_the_same(cells):
    model = export_model(_members(2), crop="window", window=320, tta=True)
    views = _views(cells)
    p = {name: np.asarray(model.predict(v, verbose=0)).reshape(-1) for name, v in views.items()}
    assert p["rot0"].shape == (len(cells),)
    for name, q in p.items():
        np.testing.assert_allclose(q, p["rot0"], atol=1e-5, err_msg=name)


def test_export_without_tta_depends_on_orientation(cells):
    model = export_model(_members(2), crop="window", window=320, tta=False)
    views = _views(cells)
    p = {name: np.asarray(model.predict(v, verbose=0)).reshape(-1) for name, v in views.items()}
    moved = max(float(np.abs(q - p["rot0"]).max()) for q in p.values())
    assert moved > 0.01, p  # so the invariance above is TTA's doing, not the network's


def test_export_tta_is_the_mean_over_the_eight_views(cells):
    member = _members(1)[0]
    per_view = [np.asarray(member.predict(v, verbose=0)).reshape(-1)
                for v in _views(cells).values()]
    model = export_model([member], crop="cell", window=None, tta=True)
    np.testing.assert_allclose(np.asarray(model.predict(cells, verbose=0)).reshape(-1),
                               np.mean(per_view, axis=0), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ensemble round trip and metadata


def test_export_ensemble_save_load_predict_is_the_mean_of_the_members(cells, tmp_path):
    members = _members(3)
    own = [predict_proba(m, cells, tta=True) for m in members]
    assert min(float(np.abs(own[i] - own[0]).max()) for i in (1, 2)) > 0.01  # distinct members
    model = export_model(members, crop="cell", window=None, threshold=0.37, tta=True,
                         info={"source": "test"})
    save_model(model, tmp_path / "ensemble.keras")
    loaded = load_model(str(tmp_path / "ensemble.keras"))
    np.testing.assert_allclose(predict_proba(loaded, cells), np.mean(own, axis=0), atol=1e-5)


def test_export_ensemble_without_tta_is_the_plain_mean(cells, tmp_path):
    members = _members(2)
    own = [predict_proba(m, cells) for m in members]
    save_model(export_model(members, crop="none", window=None, tta=False), tmp_path / "e.keras")
    loaded = load_model(str(tmp_path / "e.keras"))
    np.testing.assert_allclose(predict_proba(loaded, cells), np.mean(own, axis=0), atol=1e-5)


def test_model_spec_reads_back_what_export_stored(tmp_path):
    info = {"trial_id": "abc", "threshold_source": "out-of-fold", "members": ["a", "b"]}
    model = export_model(_members(2, size=32), crop="window", window=200, threshold=0.3125,
                         tta=True, info=info)
    save_model(model, tmp_path / "m.keras")
    spec = model_spec(load_model(str(tmp_path / "m.keras")))
    assert spec == {"crop": "window", "window": 200, "image_size": 32, "threshold": 0.3125,
                    "tta": True, "members": 2, "info": info,
                    "rule": {"name": "threshold", "threshold": 0.3125}}


def test_model_spec_of_a_plain_model_gives_the_old_defaults(tmp_path):
    member = _members(1, size=32)[0]  # a trial checkpoint: no metadata layer
    save_model(member, tmp_path / "plain.keras")
    loaded = load_model(str(tmp_path / "plain.keras"))
    with pytest.raises(ValueError):
        loaded.get_layer(SPEC_LAYER)
    assert model_spec(loaded) == {"crop": "cell", "window": None, "image_size": 32,
                                  "threshold": 0.5, "tta": False, "members": 1, "info": {},
                                  "rule": {"name": "threshold", "threshold": 0.5}}


def test_export_model_rejects_no_members():
    with pytest.raises(ValueError, match="export_model: no members to export"):
        export_model([], crop="cell", window=None)


def test_export_model_rejects_members_of_different_sizes():
    with pytest.raises(ValueError, match=r"different input sizes: \[32, 64\]"):
        export_model([_members(1, size=32)[0], _members(1, size=64)[0]], crop="cell",
                     window=None)


# ---------------------------------------------------------------------------------------------
# unreadable model files


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("export") / "model.keras"
    save_model(export_model(_members(1, size=32), crop="cell", window=None), path)
    return path.read_bytes()


def test_load_model_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere" / "model.keras"
    with pytest.raises(FileNotFoundError, match=f"{path}: no such model file"):
        load_model(str(path))


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty"])
def test_load_model_corrupt_file_names_it(tmp_path, model_bytes, damage):
    path = tmp_path / "model.keras"
    data = {"truncated": model_bytes[: len(model_bytes) // 2],
            "random_bytes": np.random.default_rng(0).bytes(4096), "empty": b""}[damage]
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{path}: not a readable .keras model"):
        load_model(str(path))
