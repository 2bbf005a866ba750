"""tf.data input pipeline from in-memory store arrays: shuffle, batch, resize, augment, prefetch.

Batches are gathered from the numpy array the store returned (one fancy-index copy per batch;
no per-image file I/O or decoding during training). Augmentation runs on training batches only:
the eight flips/90-degree rotations (a cell has no orientation), a small zoom and shift, and a
stain jitter (brightness, contrast, hue, saturation) that keeps the black background black.
"""

from __future__ import annotations

from typing import Any

import numpy as np

AUTOTUNE = -1  # tf.data.AUTOTUNE


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Loss weights per class from the training labels.

    ``balanced``: ``n / (2 * n_c)`` (inverse frequency, mean weight 1 over the samples);
    ``sqrt``: the square root of that; ``none``: ``None``.
    """
    if mode == "none":
        return None
    labels = np.asarray(labels)
    n, counts = len(labels), np.bincount(labels.astype(np.int64), minlength=2)
    if (counts == 0).any():
        raise ValueError(f"class_weight={mode!r}: the training selection has only one class "
                         f"(counts {counts.tolist()})")
    w = n / (2.0 * counts)
    if mode == "sqrt":
        w = np.sqrt(w)
    elif mode != "balanced":
        raise ValueError(f"class_weight={mode!r}: expected none, balanced or sqrt")
    return {0: float(w[0]), 1: float(w[1])}


def build_augmenter(strength: float, seed: int) -> Any:
    """A callable ``(float batch 0-255) -> augmented batch`` made of Keras preprocessing layers."""
    import tensorflow as tf
    from keras import layers

    s = float(strength)
    colour = [
        layers.RandomBrightness(0.25 * s, value_range=(0, 255), seed=seed + 1),
        layers.RandomContrast(0.3 * s, seed=seed + 2),
        layers.RandomHue(0.08 * s, value_range=(0, 255), seed=seed + 3),
        layers.RandomSaturation((0.5 - 0.3 * s, 0.5 + 0.3 * s), value_range=(0, 255),
                                seed=seed + 4),
    ] if s > 0 else []
    geometry = [
        layers.RandomFlip("horizontal_and_vertical", seed=seed + 5),
        layers.RandomZoom(0.15 * s, fill_mode="constant", seed=seed + 6),
        layers.RandomTranslation(0.1 * s, 0.1 * s, fill_mode="constant", seed=seed + 7),
    ]
    transpose_gen = tf.random.Generator.from_seed(seed + 8)

    def augment(x: Any) -> Any:
        mask = tf.cast(tf.reduce_max(x, axis=-1, keepdims=True) > 10.0, x.dtype)
        for layer in colour:
            x = layer(x, training=True)
        x = tf.clip_by_value(x, 0.0, 255.0) * mask  # jitter the stain, not the background
        # random transpose + random flips = all 8 symmetries of the square (90-degree rotations)
        flip = transpose_gen.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
        x = tf.where(flip, tf.transpose(x, [0, 2, 1, 3]), x)
        for layer in geometry:
            x = layer(x, training=True)
        return x

    return augment


def make_dataset(images: np.ndarray, labels: np.ndarray, *, image_size: int, batch_size: int,
                 training: bool, augment: bool = False, augment_strength: float = 0.5,
                 seed: int = 0) -> Any:
    """A ``tf.data.Dataset`` of ``(float32 pixels 0-255, float32 labels)`` batches.

    Args:
        images: (n, s, s, 3) uint8 RGB, as returned by ``Store.load``.
        labels: (n,) 0/1.
        image_size: output side; batches are resized when it differs from ``s``.
        batch_size: images per batch.
        training: shuffle (seeded, reshuffled each epoch) and, if ``augment``, augment.
        augment: apply :func:`build_augmenter` (training only).
        augment_strength: 0..1 scale of the augmentation ranges.
        seed: seeds the shuffle and the augmentation.
    """
    import tensorflow as tf

    n, src = len(labels), images.shape[1]
    y = np.asarray(labels, dtype=np.float32)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx) if not training else idx
        return images[idx], y[idx]

    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda i: tf.numpy_function(gather, [i], (tf.uint8, tf.float32)),
                num_parallel_calls=AUTOTUNE, deterministic=True)

    def finish(x: Any, t: Any) -> tuple[Any, Any]:
        x = tf.cast(tf.ensure_shape(x, [None, src, src, 3]), tf.float32)
        if image_size != src:
            x = tf.image.resize(x, (image_size, image_size), antialias=True)
        return x, tf.ensure_shape(t, [None])

    ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and augment:
        aug = build_augmenter(augment_strength, seed)
        ds = ds.map(lambda x, t: (aug(x), t), num_parallel_calls=1, deterministic=True)
    return ds.prefetch(AUTOTUNE)
