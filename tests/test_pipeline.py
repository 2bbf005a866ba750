"""Tests for leukemia.pipeline: class weights by hand, batches, resizing and augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leukemia.pipeline import class_weights, make_dataset

# ---------------------------------------------------------------------------------------------
# class_weights


def test_class_weights_balanced_hand_computed():
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0])  # 6 ALL, 3 normal
    # n / (2 * n_c): 9 / 6 = 1.5 for normal, 9 / 12 = 0.75 for ALL
    assert class_weights(labels, "balanced") == {0: 1.5, 1: 0.75}


def test_class_weights_balanced_mean_weight_is_one():
    labels = np.array([0] * 7 + [1] * 3, dtype=np.int8)
    w = class_weights(labels, "balanced")
    assert w is not None
    assert np.mean([w[int(y)] for y in labels]) == pytest.approx(1.0)


def test_class_weights_sqrt_hand_computed():
    w = class_weights(np.array([1, 1, 1, 1, 1, 1, 0, 0, 0]), "sqrt")
    assert w == pytest.approx({0: math.sqrt(1.5), 1: math.sqrt(0.75)})


def test_class_weights_balanced_classes_get_one():
    assert class_weights(np.array([0, 1, 0, 1]), "balanced") == {0: 1.0, 1: 1.0}


def test_class_weights_none_is_none():
    assert class_weights(np.array([1, 1, 0]), "none") is None


def test_class_weights_single_class_raises():
    with pytest.raises(ValueError, match=r"only one class \(counts \[0, 4\]\)"):
        class_weights(np.array([1, 1, 1, 1]), "balanced")


def test_class_weights_unknown_mode_raises():
    with pytest.raises(ValueError,
                       match="class_weight='inverse': expected none, balanced or sqrt"):
        class_weights(np.array([0, 1]), "inverse")


# ---------------------------------------------------------------------------------------------
# make_dataset


def _cells(n: int = 10, side: int = 32, seed: int = 0) -> np.ndarray:
    """Random-coloured discs on a black background (black corners), uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    centre = (side - 1) / 2
    disc = (yy - centre) ** 2 + (xx - centre) ** 2 < (0.3 * side) ** 2
    return (rng.integers(60, 250, (n, side, side, 3)) * disc[None, :, :, None]).astype(np.uint8)


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_make_dataset_validation_gives_the_input_pixels_in_order():
    images = _cells(10)
    labels = np.arange(10) % 2
    ds = make_dataset(images, labels, image_size=32, batch_size=4, training=False, augment=True,
                      augment_strength=1.0)
    x, y = _collect(ds)
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, labels.astype(np.float32))
    x2, _ = _collect(ds)  # a second pass: still untouched, still in order
    np.testing.assert_array_equal(x2, images.astype(np.float32))


def test_make_dataset_batch_shapes_and_dtypes():
    ds = make_dataset(_cells(10), np.arange(10) % 2, image_size=32, batch_size=4, training=True,
                      augment=True)
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.float32
        assert y.shape == (len(x),) and y.dtype == np.float32
        assert x.min() >= 0 and x.max() <= 255


def test_make_dataset_resizes_to_image_size():
    for training in (False, True):
        ds = make_dataset(_cells(6), np.arange(6) % 2, image_size=20, batch_size=4,
                          training=training, augment=training)
        x, y = _collect(ds)
        assert x.shape == (6, 20, 20, 3) and x.dtype == np.float32
        assert y.shape == (6,)


def test_make_dataset_training_without_augment_shuffles_the_same_images():
    images = _cells(10)
    labels = np.arange(10) % 2
    x, y = _collect(make_dataset(images, labels, image_size=32, batch_size=4, training=True,
                                 augment=False, seed=3))
    key = lambda a: [a[i].tobytes() for i in range(len(a))]  # noqa: E731
    assert sorted(key(x)) == sorted(key(images.astype(np.float32)))
    assert sorted(y.tolist()) == sorted(labels.astype(np.float32).tolist())


def test_make_dataset_augmentation_changes_training_batches():
    images = _cells(10)
    labels = np.arange(10) % 2
    kw = dict(image_size=32, batch_size=4, training=True, seed=0)
    raw = make_dataset(images, labels, augment=False, **kw)
    aug = make_dataset(images, labels, augment=True, augment_strength=0.5, **kw)
    # same seed, same shuffle: batch k of both holds the same images
    for (xr, yr), (xa, ya) in zip(raw, aug, strict=True):
        np.testing.assert_array_equal(yr.numpy(), ya.numpy())
        for r, a in zip(xr.numpy(), xa.numpy(), strict=True):
            assert not np.array_equal(r, a)


def test_make_dataset_augmentation_differs_between_epochs():
    ds = make_dataset(_cells(4), np.array([0, 1, 0, 1]), image_size=32, batch_size=4,
                      training=True, augment=True, seed=0)
    first, _ = _collect(ds)
    second, _ = _collect(ds)
    assert not np.array_equal(np.sort(first.reshape(4, -1), axis=0),
                              np.sort(second.reshape(4, -1), axis=0))


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_make_dataset_augmentation_keeps_black_background_black(strength):
    images = _cells(12, side=32)
    assert not images[:, :4, :4].any() and not images[:, -4:, -4:].any()
    ds = make_dataset(images, np.arange(12) % 2, image_size=32, batch_size=4, training=True,
                      augment=True, augment_strength=strength, seed=1)
    for _ in range(2):
        x, _ = _collect(ds)
        assert x.any()  # the cells are still there
        for corner in (x[:, :2, :2], x[:, :2, -2:], x[:, -2:, :2], x[:, -2:, -2:]):
            assert (corner == 0).all()
