"""Backbone registry and the binary classifier built on it.

    >>> list_backbones()
    ['densenet121', 'efficientnet_b0', ...]
    >>> model = create_backbone("mobilenet_v3_small", image_size=128, weights="none")

Every model takes raw RGB pixels (0-255, any numeric dtype) and returns the probability of ALL
(one sigmoid unit). The backbone's own preprocessing lives inside the model, so a saved
``.keras`` file needs nothing else. Registering a backbone is a few lines::

    @register_backbone("my_net", min_size=32, pretrained=False)
    def _my_net(x, weights):          # x: float32 pixels 0-255; returns a 4D feature map
        ...

Importing this module does not import TensorFlow; building a model does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKBONE_LAYER = "backbone"  # name of the (freezable) pretrained sub-model inside a classifier


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and what it needs."""

    name: str
    build: Callable[[Any, str], Any]  # (float pixels tensor, weights) -> feature map
    min_size: int  # smallest input side it accepts
    pretrained: bool  # has ImageNet weights in keras.applications
    multiple_of: int = 1  # input side must be a multiple of this


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, *, min_size: int = 32, pretrained: bool = True,
                      multiple_of: int = 1) -> Callable:
    """Decorator adding a feature-extractor builder to the registry under ``name``."""
    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneSpec(name, fn, min_size, pretrained, multiple_of)
        return fn
    return deco


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# Serialisable layers: built and registered on first use, so importing this module stays light

SPEC_LAYER = "cnmc_spec"  # the exported model's metadata layer
SYMMETRIES = 8  # the dihedral group of the square: 4 rotations x optional flip


@functools.cache
def _layers() -> dict[str, type]:
    """This module's custom layer classes, registered with Keras, by class name."""
    import keras
    from keras import ops

    from leukemia.pipeline import FOREGROUND_FLOOR

    @keras.saving.register_keras_serializable(package="leukemia")
    class Preprocess(keras.layers.Layer):
        """Maps 0-255 RGB to a backbone's expected input ('unit', 'tf', 'torch', 'caffe')."""

        def __init__(self, mode: str = "unit", **kw: Any) -> None:
            super().__init__(**kw)
            self.mode = mode

        def call(self, x: Any) -> Any:
            x = ops.cast(x, self.compute_dtype)
            if self.mode == "unit":
                return x / 255.0
            if self.mode == "tf":
                return x / 127.5 - 1.0
            if self.mode == "torch":
                mean = ops.convert_to_tensor([0.485, 0.456, 0.406], self.compute_dtype)
                std = ops.convert_to_tensor([0.229, 0.224, 0.225], self.compute_dtype)
                return (x / 255.0 - mean) / std
            if self.mode == "caffe":  # RGB -> BGR, ImageNet mean subtracted
                mean = ops.convert_to_tensor([103.939, 116.779, 123.68], self.compute_dtype)
                return ops.flip(x, axis=-1) - mean
            return x  # "none": the backbone rescales itself

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "mode": self.mode}

    @keras.saving.register_keras_serializable(package="leukemia")
    class ForegroundStandardize(keras.layers.Layer):
        """Each cell's pixels standardised per channel over the cell (pixels brighter than
        ``floor`` in some channel), mapped back to 0-255 around 128 with 48 per standard
        deviation; the black background stays 0. A patient's stain and brightness go; the
        cell's texture and shape stay."""

        def __init__(self, floor: float = FOREGROUND_FLOOR, **kw: Any) -> None:
            super().__init__(**kw)
            self.floor = float(floor)

        def call(self, x: Any) -> Any:
            x = ops.cast(x, "float32")
            mask = ops.cast(ops.max(x, axis=-1, keepdims=True) > self.floor, "float32")
            n = ops.maximum(ops.sum(mask, axis=(1, 2), keepdims=True), 1.0)
            mean = ops.sum(x * mask, axis=(1, 2), keepdims=True) / n
            var = ops.sum(ops.square(x - mean) * mask, axis=(1, 2), keepdims=True) / n
            z = (x - mean) / ops.sqrt(var + 1.0)
            return ops.clip(128.0 + 48.0 * z, 1.0, 255.0) * mask

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "floor": self.floor}

    @keras.saving.register_keras_serializable(package="leukemia")
    class CellSpec(keras.layers.Layer):
        """Identity on the pixels; carries what ``predict`` needs to prepare a raw image and
        decide its class: the crop, the input size, the decision rule (``leukemia.rules``;
        ``threshold`` is its cut or fallback), TTA, members."""

        def __init__(self, crop: str = "cell", window: int | None = None, image_size: int = 0,
                     threshold: float = 0.5, tta: bool = False, members: int = 1,
                     info: dict | None = None, rule: dict | None = None, **kw: Any) -> None:
            super().__init__(**kw)
            self.crop, self.window, self.image_size = crop, window, image_size
            self.threshold, self.tta, self.members = float(threshold), bool(tta), int(members)
            self.info = dict(info or {})
            self.rule = dict(rule or {"name": "threshold", "threshold": self.threshold})

        def call(self, x: Any) -> Any:
            return ops.cast(x, "float32")

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "crop": self.crop, "window": self.window,
                    "image_size": self.image_size, "threshold": self.threshold,
                    "tta": self.tta, "members": self.members, "info": self.info,
                    "rule": self.rule}

    @keras.saving.register_keras_serializable(package="leukemia")
    class DihedralStack(keras.layers.Layer):
        """(B, H, W, C) -> (8B, H, W, C): the 4 rotations of the batch and of its transpose."""

        def call(self, x: Any) -> Any:
            views = []
            for base in (x, ops.transpose(x, (0, 2, 1, 3))):
                for _ in range(4):
                    views.append(base)
                    base = ops.flip(ops.transpose(base, (0, 2, 1, 3)), axis=2)  # rotate 90
            return ops.concatenate(views, axis=0)

    @keras.saving.register_keras_serializable(package="leukemia")
    class GroupMean(keras.layers.Layer):
        """(8B, 1) -> (B, 1): the mean over the 8 views of each image."""

        def call(self, p: Any) -> Any:
            return ops.mean(ops.reshape(p, (SYMMETRIES, -1, 1)), axis=0)

    return {cls.__name__: cls for cls in (Preprocess, ForegroundStandardize, CellSpec,
                                          DihedralStack, GroupMean)}


def foreground_standardize() -> Any:
    """A serialisable layer standardising each cell's pixels (see ``ForegroundStandardize``)."""
    return _layers()["ForegroundStandardize"](name="foreground_standardize")


def preprocess(mode: str) -> Any:
    """A serialisable layer converting raw 0-255 pixels for a backbone (see ``Preprocess``)."""
    return _layers()["Preprocess"](mode, name=f"preprocess_{mode}")


# ---------------------------------------------------------------------------------------------
# Backbones


def _conv_block(x: Any, filters: int, name: str, norm: str = "batch") -> Any:
    from keras import layers

    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    if norm == "group":  # no batch statistics: nothing of the training patients' carried over
        x = layers.GroupNormalization(8, name=f"{name}_gn")(x)
    else:  # momentum 0.9: moving statistics settle within a few dozen steps (few epochs)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _cnn4(x: Any, norm: str) -> Any:
    """The plain 4-block CNN of the C-NMC notebooks (conv-norm-ReLU-maxpool)."""
    from keras import layers

    x = preprocess("unit")(x)
    for i, f in enumerate((32, 64, 128, 256)):
        x = _conv_block(x, f, f"block{i + 1}", norm)
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x) if i < 3 else x
    return x


register_backbone("small_cnn", min_size=16, pretrained=False)(lambda x, w: _cnn4(x, "batch"))
register_backbone("small_cnn_gn", min_size=16, pretrained=False)(lambda x, w: _cnn4(x, "group"))


@register_backbone("unet", min_size=16, pretrained=False, multiple_of=8)
def _unet(x: Any, weights: str) -> Any:
    """U-Net encoder-decoder; its full-resolution output feeds the classifier ("ANNa")."""
    from keras import layers

    x = preprocess("unit")(x)
    skips = []
    for i, f in enumerate((16, 32, 64)):
        x = _conv_block(_conv_block(x, f, f"enc{i}a"), f, f"enc{i}b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    x = _conv_block(_conv_block(x, 128, "mid_a"), 128, "mid_b")
    for i, f in reversed(list(enumerate((16, 32, 64)))):
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_cat")([x, skips[i]])
        x = _conv_block(_conv_block(x, f, f"dec{i}a"), f, f"dec{i}b")
    return x


def _app(name: str, cls_name: str, mode: str, *, min_size: int = 32, **kwargs: Any) -> None:
    """Register a keras.applications model with its preprocessing mode."""
    @register_backbone(name, min_size=min_size, pretrained=True)
    def build(x: Any, weights: str) -> Any:
        import keras

        cls = getattr(keras.applications, cls_name)
        size = int(x.shape[1])
        w = None if weights == "none" else weights
        try:
            base = cls(include_top=False, weights=w, input_shape=(size, size, 3), **kwargs)
        except Exception as e:  # the download is the only step that needs the network
            text = f"{type(e).__name__} {e}".lower()
            if w is None or not any(k in text for k in ("url fetch", "urlopen", "connection",
                                                        "name resolution", "http error",
                                                        "network")):
                raise
            raise RuntimeError(
                f"{name}: could not download the ImageNet weights ({type(e).__name__}: {e}). "
                "This machine may have no internet: use weights=none, or pre-populate the Keras "
                "cache (~/.keras/models/) on a machine that has it") from e
        base._name = BACKBONE_LAYER
        return base(preprocess(mode)(x))


_app("mobilenet_v3_small", "MobileNetV3Small", "none", include_preprocessing=True)
_app("mobilenet_v3_large", "MobileNetV3Large", "none", include_preprocessing=True)
_app("mobilenet_v2", "MobileNetV2", "tf")
_app("efficientnet_b0", "EfficientNetB0", "none")  # rescales internally
_app("efficientnet_v2_b0", "EfficientNetV2B0", "none", include_preprocessing=True)
_app("resnet50", "ResNet50", "caffe")
_app("inception_v3", "InceptionV3", "tf", min_size=75)
_app("xception", "Xception", "tf", min_size=71)
_app("vgg19", "VGG19", "caffe")
_app("densenet121", "DenseNet121", "torch")


# ---------------------------------------------------------------------------------------------
# Classifier


def create_backbone(name: str, *, image_size: int, weights: str = "none",
                    dropout: float = 0.0, normalize: str = "none") -> Any:
    """Build a binary classifier on a registered backbone.

    Args:
        name: a name from :func:`list_backbones`.
        image_size: input side in px (checked against the backbone's minimum).
        weights: ``"none"`` (random init) or ``"imagenet"``.
        dropout: dropout rate before the sigmoid unit.
        normalize: ``"foreground"`` standardises each cell's pixels first
            (:func:`foreground_standardize`); ``"none"``: raw pixels.

    Returns:
        An uncompiled ``keras.Model`` mapping (N, S, S, 3) pixels 0-255 to (N, 1) P(ALL).
    """
    spec = backbone_spec(name)
    if image_size < spec.min_size:
        raise ValueError(f"{name} needs an input of at least {spec.min_size} px, "
                         f"got image_size={image_size}")
    if image_size % spec.multiple_of:
        raise ValueError(f"{name} needs an input side that is a multiple of {spec.multiple_of}, "
                         f"got image_size={image_size}")
    if weights not in ("none", "imagenet"):
        raise ValueError(f"weights={weights!r}: expected 'none' or 'imagenet'")
    if weights == "imagenet" and not spec.pretrained:
        raise ValueError(f"{name} has no pretrained weights; use weights='none'")
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    if normalize == "foreground":
        x = foreground_standardize()(x)
    elif normalize != "none":
        raise ValueError(f"normalize={normalize!r}: expected 'none' or 'foreground'")
    x = spec.build(x, weights)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_all")(x)
    return keras.Model(inputs, out, name=name)


def export_model(members: list[Any], *, crop: str, window: int | None, threshold: float = 0.5,
                 tta: bool = True, info: dict[str, Any] | None = None,
                 rule: dict[str, Any] | None = None) -> Any:
    """One classifier from trained members: raw pixels in, mean P(ALL) out.

    Args:
        members: trained classifiers of one input size (e.g. one per held-out fold and seed).
        crop, window: how images were cropped at ingest; ``predict`` applies the same.
        threshold: P(ALL) at or above which a cell is called ALL (stored in the model).
        tta: average each member over the 8 flips/90-degree rotations of the cell (a cell has
            no orientation), inside the model, so anyone loading it gets the same scores.
        info: JSON-serialisable notes kept in the model (e.g. where the threshold came from).
        rule: the decision rule (``leukemia.rules.Rule.to_dict()``); default: ``threshold``.

    Returns:
        A ``keras.Model`` whose metadata :func:`model_spec` reads back.
    """
    import keras
    from keras import layers

    if not members:
        raise ValueError("export_model: no members to export")
    size = int(members[0].input_shape[1])
    if any(int(m.input_shape[1]) != size for m in members):
        raise ValueError("export_model: the members take different input sizes: "
                         f"{[int(m.input_shape[1]) for m in members]}")
    L = _layers()
    inputs = keras.Input((size, size, 3), name="pixels")
    x = L["CellSpec"](crop=crop, window=window, image_size=size, threshold=threshold, tta=tta,
                      members=len(members), info=info, rule=rule, name=SPEC_LAYER)(inputs)
    if tta:
        x = L["DihedralStack"](name="tta_views")(x)
    for i, m in enumerate(members):
        m.name = f"member_{i}"  # nested models need distinct names in one graph
    outs = [m(x) for m in members]
    p = outs[0] if len(outs) == 1 else layers.Average(name="ensemble_mean")(outs)
    if tta:
        p = L["GroupMean"](name="tta_mean")(p)
    return keras.Model(inputs, p, name="cnmc_classifier")


def model_spec(model: Any) -> dict[str, Any]:
    """What a classifier needs to score a raw image: crop, window, image_size, threshold, tta,
    members, info, rule (a ``leukemia.rules.Rule`` dict). A model saved before these were stored
    (a trial checkpoint, an older export) gets the defaults of its time: the cell crop and the
    0.5 threshold."""
    try:
        cfg = model.get_layer(SPEC_LAYER).get_config()
    except ValueError:
        cfg = {"crop": "cell", "window": None, "image_size": int(model.input_shape[1]),
               "threshold": 0.5, "tta": False, "members": 1, "info": {}}
    out = {k: cfg[k] for k in ("crop", "window", "image_size", "threshold", "tta", "members",
                               "info")}
    out["rule"] = cfg.get("rule") or {"name": "threshold", "threshold": cfg["threshold"]}
    return out


def load_model(path: str) -> Any:
    """Load a saved classifier (``.keras``), with this module's custom layers registered.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Keras model (truncated, corrupt, other format).
    """
    import keras

    _layers()
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, OSError, ...
        raise ValueError(f"{path}: not a readable .keras model ({type(e).__name__}: {e}); "
                         "re-export it or point at another file") from e
