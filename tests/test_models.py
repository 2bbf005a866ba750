"""Tests for leukemia.models: every registered backbone builds and runs; errors; saving."""

from __future__ import annotations

import re

import numpy as np
import pytest

from leukemia.models import backbone_spec, create_backbone, list_backbones, load_model


def _smallest_size(name: str) -> int:
    spec = backbone_spec(name)
    return -(-spec.min_size // spec.multiple_of) * spec.multiple_of


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list_backbones())
def test_create_backbone_builds_and_runs_every_backbone(name):
    import keras

    keras.backend.clear_session()
    size = _smallest_size(name)
    model = create_backbone(name, image_size=size, weights="none", dropout=0.2)
    assert model.input_shape == (None, size, size, 3)
    p = np.asarray(model(_pixels(2, size), training=False))
    assert p.shape == (2, 1)
    assert not np.isnan(p).any()
    assert ((p >= 0) & (p <= 1)).all()


def test_list_backbones_is_sorted_and_holds_the_scratch_nets():
    names = list_backbones()
    assert names == sorted(names)
    assert {"small_cnn", "unet", "mobilenet_v3_small"} <= set(names)


def test_create_backbone_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'") as info:
        create_backbone("alexnet", image_size=64)
    for name in list_backbones():
        assert name in str(info.value)


def test_create_backbone_rejects_input_below_minimum():
    with pytest.raises(ValueError, match=re.escape("xception needs an input of at least 71 px, "
                                                   "got image_size=64")):
        create_backbone("xception", image_size=64)


def test_create_backbone_rejects_side_not_a_multiple():
    with pytest.raises(ValueError, match=re.escape("unet needs an input side that is a multiple "
                                                   "of 8, got image_size=20")):
        create_backbone("unet", image_size=20)


def test_create_backbone_rejects_unknown_weights():
    with pytest.raises(ValueError, match=re.escape("weights='random': expected 'none' or "
                                                   "'imagenet'")):
        create_backbone("small_cnn", image_size=32, weights="random")


def test_create_backbone_rejects_imagenet_for_scratch_backbone():
    with pytest.raises(ValueError,
                       match="small_cnn has no pretrained weights; use weights='none'"):
        create_backbone("small_cnn", image_size=32, weights="imagenet")


def test_create_backbone_imagenet_offline_says_use_weights_none():
    try:
        model = create_backbone("mobilenet_v3_small", image_size=32, weights="imagenet")
    except RuntimeError as e:
        message = str(e)
        assert "mobilenet_v3_small: could not download the ImageNet weights" in message
        assert "weights=none" in message
        return
    assert model.output_shape == (None, 1)
    pytest.skip("the ImageNet weights were available (network or Keras cache): "
                "the offline error path cannot be exercised here")


def test_register_backbone_rejects_a_duplicate_name():
    from leukemia.models import register_backbone

    with pytest.raises(ValueError, match="backbone 'small_cnn' is already registered"):
        register_backbone("small_cnn")(lambda x, weights: x)


def test_load_model_round_trips_a_saved_model(tmp_path):
    import keras

    keras.backend.clear_session()
    model = create_backbone("small_cnn", image_size=32, dropout=0.2)
    x = _pixels(3, 32, seed=1)
    before = np.asarray(model.predict(x, verbose=0))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(str(path))
    assert loaded.get_layer("preprocess_unit").get_config()["mode"] == "unit"
    np.testing.assert_array_equal(np.asarray(loaded.predict(x, verbose=0)), before)
