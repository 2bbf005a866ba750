"""tf.data input pipeline from in-memory store arrays: shuffle, batch, resize, augment, prefetch.

Batches are gathered from the numpy array the store returned (one fancy-index copy per batch;
no per-image file I/O or decoding during training). Augmentation runs on training batches only:
the eight flips/90-degree rotations (a cell has no orientation), a small zoom and shift, and a
colour jitter (brightness, contrast, hue, saturation) that keeps the black background black.
Against patient shift, each with its own knob: stain jitter in optical density (haematoxylin,
eosin, DAB; Tellez et al. 2019), random grayscale, MixUp, and per-patient sample weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

AUTOTUNE = -1  # tf.data.AUTOTUNE
# A pixel belongs to the cell when some channel is above this (the frame is black; the same
# floor as the store's crops, leukemia.imaging.crop_to_cell)
FOREGROUND_FLOOR = 10.0


def _foreground(x: Any) -> Any:
    """(B, H, W, 1) float mask of the cell's pixels in a float batch."""
    import tensorflow as tf

    return tf.cast(tf.reduce_max(x, axis=-1, keepdims=True) > FOREGROUND_FLOOR, x.dtype)


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


def patient_weights(patient_ids: np.ndarray, labels: np.ndarray,
                    class_weight: dict[int, float] | None) -> np.ndarray:
    """Per-cell loss weights giving every patient the same total weight (times the class
    weight of its cells), scaled to mean 1: a patient with 600 cells no longer counts 20x one
    with 30, so the network has less reason to learn the largest patients' look."""
    _, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    if class_weight:
        w = w * np.where(np.asarray(labels) == 1, class_weight[1], class_weight[0])
    return (w / w.mean()).astype(np.float32)


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def build_shift_augmenter(stain_jitter: float, grayscale: float, seed: int) -> Any:
    """A callable ``(float batch 0-255) -> batch`` with stain jitter in optical density and
    random grayscale, on the cell only (optical density is undefined on the black background)."""
    import tensorflow as tf

    gen = tf.random.Generator.from_seed(seed + 11)
    to_hed = tf.constant(_HED_FROM_RGB, tf.float32)
    to_rgb = tf.constant(_RGB_FROM_HED, tf.float32)
    grey = tf.constant([0.299, 0.587, 0.114], tf.float32)

    def augment(x: Any) -> Any:
        n = tf.shape(x)[0]
        mask = _foreground(x)
        if stain_jitter > 0:
            od = -tf.math.log((x + 1.0) / 256.0)
            hed = tf.einsum("bhwc,cd->bhwd", od, to_hed)
            alpha = gen.uniform([n, 1, 1, 3], 1.0 - stain_jitter, 1.0 + stain_jitter)
            beta = gen.uniform([n, 1, 1, 3], -stain_jitter, stain_jitter)
            od = tf.einsum("bhwd,dc->bhwc", hed * alpha + beta, to_rgb)
            y = tf.clip_by_value(256.0 * tf.exp(-od) - 1.0, 0.0, 255.0)
            x = y * mask + x * (1.0 - mask)
        if grayscale > 0:
            g = tf.reduce_sum(x * grey, axis=-1, keepdims=True) * tf.ones_like(x)
            x = tf.where(gen.uniform([n, 1, 1, 1]) < grayscale, g, x)
        return x

    return augment


def mixup(x: Any, y: Any, w: Any, alpha: float, gen: Any) -> tuple[Any, Any, Any]:
    """MixUp (Zhang et al. 2018) within a batch: each image blended with another one of the
    batch at a Beta(alpha, alpha) weight (one per image), labels and weights alike."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    seeds = gen.make_seeds(3)
    a = tf.random.stateless_gamma([n], seeds[:, 0], alpha)
    lam = a / (a + tf.random.stateless_gamma([n], seeds[:, 1], alpha))
    lam = tf.maximum(lam, 1.0 - lam)  # the image keeps the larger share: its label dominates
    perm = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seeds[:, 2])
    l4 = tf.reshape(lam, [-1, 1, 1, 1])
    x = l4 * x + (1.0 - l4) * tf.gather(x, perm)
    y = lam * y + (1.0 - lam) * tf.gather(y, perm)
    w = lam * w + (1.0 - lam) * tf.gather(w, perm)
    return x, y, w


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
        mask = _foreground(x)
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
                 seed: int = 0, weights: np.ndarray | None = None, stain_jitter: float = 0.0,
                 grayscale: float = 0.0, mixup_alpha: float = 0.0) -> Any:
    """A ``tf.data.Dataset`` of ``(float32 pixels 0-255, float32 labels)`` batches
    (``(pixels, labels, weights)`` when ``weights`` or ``mixup_alpha`` is given).

    Args:
        images: (n, s, s, 3) uint8 RGB, as returned by ``Store.load``.
        labels: (n,) 0/1.
        image_size: output side; batches are resized when it differs from ``s``.
        batch_size: images per batch.
        training: shuffle (seeded, reshuffled each epoch) and, if ``augment``, augment.
        augment: apply :func:`build_augmenter` (training only).
        augment_strength: 0..1 scale of the augmentation ranges.
        seed: seeds the shuffle and the augmentation.
        weights: (n,) per-cell loss weights (e.g. :func:`patient_weights`).
        stain_jitter, grayscale: :func:`build_shift_augmenter` (training only).
        mixup_alpha: MixUp's Beta concentration (training only; 0: off).
    """
    import tensorflow as tf

    n, src = len(labels), images.shape[1]
    y = np.asarray(labels, dtype=np.float32)
    mixing = training and mixup_alpha > 0
    weighted = weights is not None or mixing
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.sort(idx) if not training else idx
        return images[idx], y[idx], w[idx]

    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda i: tf.numpy_function(gather, [i], (tf.uint8, tf.float32, tf.float32)),
                num_parallel_calls=AUTOTUNE, deterministic=True)

    def finish(x: Any, t: Any, v: Any) -> tuple[Any, Any, Any]:
        x = tf.cast(tf.ensure_shape(x, [None, src, src, 3]), tf.float32)
        if image_size != src:
            x = tf.image.resize(x, (image_size, image_size), antialias=True)
        return x, tf.ensure_shape(t, [None]), tf.ensure_shape(v, [None])

    ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and augment:
        aug = build_augmenter(augment_strength, seed)
        ds = ds.map(lambda x, t, v: (aug(x), t, v), num_parallel_calls=1, deterministic=True)
    if training and (stain_jitter > 0 or grayscale > 0):
        shift = build_shift_augmenter(stain_jitter, grayscale, seed)
        ds = ds.map(lambda x, t, v: (shift(x), t, v), num_parallel_calls=1, deterministic=True)
    if mixing:
        gen = tf.random.Generator.from_seed(seed + 12)
        ds = ds.map(lambda x, t, v: mixup(x, t, v, mixup_alpha, gen), num_parallel_calls=1,
                    deterministic=True)
    if not weighted:
        ds = ds.map(lambda x, t, v: (x, t), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)
