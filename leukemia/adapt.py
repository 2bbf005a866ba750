"""Batch-norm statistics re-estimated on the pooled cells being predicted (AdaBN).

Li et al. (2016), "Revisiting batch normalization for practical domain adaptation": a network's
BatchNorm layers carry the mean and variance of their inputs over the *training* images; on
images of another domain (here: other patients, another staining day) those statistics are off
and every later layer sees shifted inputs. Re-estimating them on the unlabelled cells being
predicted is the cheapest known remedy (Tsutsui et al., ICASSP 2023, for white-cell
classifiers). It is transductive: the statistics come from the whole batch being predicted, so
the batch must be large and pooled over patients, never one patient's cells (each C-NMC patient
carries one label: per-patient statistics would erase the class).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

MIN_CELLS = 100  # fewer pooled cells give statistics noisier than the training ones


def batchnorm_layers(model: Any) -> list[Any]:
    """Every trainable BatchNormalization layer of ``model``, nested models included."""
    import keras

    found: list[Any] = []

    def walk(layer: Any) -> None:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable:  # a frozen BN runs in inference mode whatever ``training`` says
                found.append(layer)
            return
        for sub in getattr(layer, "layers", []):
            walk(sub)

    for layer in model.layers:
        walk(layer)
    return found


@contextmanager
def adapted_batchnorm(model: Any, images: np.ndarray, batch_size: int = 64) -> Iterator[int]:
    """Within the block, ``model``'s BatchNorm statistics are those of ``images`` (uint8 cells
    as ``leukemia.train.predict_proba`` takes them); restored on exit. Yields the number of
    layers adapted (0: nothing to adapt, e.g. GroupNorm).

    One pass in training mode over ``images``: each layer's moving mean and variance become the
    size-weighted mean of its batch statistics (momentum ``seen / (seen + n)`` per batch), each
    batch normalised by its own statistics as in training. Dropout, active in that pass, sits
    after the last BatchNorm in this project's heads.
    """
    from leukemia.pipeline import make_dataset

    layers = batchnorm_layers(model)
    if not layers or len(images) == 0:
        yield 0
        return
    saved = [(layer.momentum, layer.moving_mean.numpy(), layer.moving_variance.numpy())
             for layer in layers]
    size = int(model.input_shape[1])
    ds = make_dataset(images, np.zeros(len(images)), image_size=size, batch_size=batch_size,
                      training=False)
    try:
        seen = 0
        for x, _ in ds:
            n = int(x.shape[0])
            for layer in layers:
                layer.momentum = seen / (seen + n)
            model(x, training=True)
            seen += n
        yield len(layers)
    finally:
        for layer, (momentum, mean, var) in zip(layers, saved):
            layer.momentum = momentum
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)
