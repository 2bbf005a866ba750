"""Backbones that fail for real, loaded into search workers with ``--plugin``.

``broken_net`` raises while the model is built; ``nan_net`` builds a real model whose output is
NaN, so the training loss is NaN and ``fit`` stops with status "nan".
"""

from __future__ import annotations

from typing import Any

from leukemia.models import register_backbone


@register_backbone("broken_net", min_size=8, pretrained=False)
def _broken(x: Any, weights: str) -> Any:
    raise RuntimeError("broken_net: this backbone always fails to build (test plugin)")


@register_backbone("nan_net", min_size=8, pretrained=False)
def _nan(x: Any, weights: str) -> Any:
    from keras import layers

    x = layers.Conv2D(4, 3, padding="same")(x)
    return layers.Rescaling(float("nan"))(x)
