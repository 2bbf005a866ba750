"""A backbone that can never learn, loaded into search workers with ``--plugin``.

``constant_cnn`` multiplies its features by zero, so the sigmoid unit sees only its bias: every
cell gets the same P(ALL), one class at 0.5 and ROC AUC exactly 0.5, whatever the training. The
search must stop its trials at the first rung (status ``constant``) and never export one.
"""

from __future__ import annotations

from typing import Any

from leukemia.models import register_backbone


@register_backbone("constant_cnn", min_size=8, pretrained=False)
def _constant(x: Any, weights: str) -> Any:
    from keras import layers

    x = layers.Conv2D(4, 3, padding="same")(x)
    return layers.Rescaling(0.0)(x)  # features all zero: the output is sigmoid(bias)
