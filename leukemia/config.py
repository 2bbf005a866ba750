"""``TrainConfig``: everything one training run needs, validated on construction.

    >>> TrainConfig().override(["backbone=mobilenet_v3_small", "learning_rate=3e-4"])

The config is saved as ``config.json`` beside every model and result; ``from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
WEIGHTS = ("none", "imagenet")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")  # sqrt: square root of the balanced weights
NORMALIZE = ("none", "foreground")


@dataclass(frozen=True)
class TrainConfig:
    """One training run's configuration. Every field can be set with ``key=value``."""

    backbone: str = "small_cnn"  # a name from leukemia.models.list_backbones()
    weights: str = "none"  # "imagenet" for pretrained Keras backbones (needs a download)
    image_size: int = 128  # model input side in px; the store's images are resized to it
    batch_size: int = 32  # images per step
    epochs: int = 10  # total epochs, frozen-backbone epochs included
    learning_rate: float = 1e-3  # peak learning rate of the optimizer
    # cosine: linear warm-up, then cosine decay to 0 at schedule_epochs; steadier held-out
    # scores between epochs than a constant rate (benchmarks/quality.py, PERFORMANCE.md)
    lr_schedule: str = "cosine"
    warmup_epochs: int = 1  # linear warm-up epochs of the cosine schedule
    # epochs the cosine decay spans (0: epochs). A search sets ASHA's max_t, so a trial stopped
    # early and a retrain for its peak epoch count follow the same learning-rate curve
    schedule_epochs: int = 0
    ema: bool = False  # score and export an exponential moving average of the weights
    optimizer: str = "adam"  # adam | adamw | sgd (momentum 0.9, Nesterov)
    weight_decay: float = 0.0  # decoupled weight decay (adamw, sgd); 0 disables
    dropout: float = 0.2  # dropout before the classification unit
    augment: bool = True  # flips, 90-degree rotations, zoom/shift, stain jitter (training only)
    augment_strength: float = 0.5  # 0..1: scales zoom, shift and colour jitter ranges
    class_weight: str = "balanced"  # none | balanced (inverse class frequency) | sqrt
    # Against patient shift (each C-NMC patient has one label, so a network can learn patients):
    # stain jitter in haematoxylin-eosin-DAB optical density, foreground only (Tellez et al.
    # 2019): each stain's density scaled by 1 +- s and shifted by +- s per image; 0: off
    stain_jitter: float = 0.0
    grayscale: float = 0.0  # probability of turning a training image grey (colour-blind cue)
    mixup: float = 0.0  # MixUp Beta(a, a) concentration on training batches; 0: off
    # foreground: each cell's pixels standardised per channel (mean, std over the cell, black
    # background kept black) by a layer inside the model, so stain and brightness of a
    # patient's slide cannot be learned; none: raw pixels
    normalize: str = "none"
    patient_balance: bool = False  # sample weights giving every training patient equal weight
    freeze_epochs: int = 0  # pretrained only: epochs training the head on a frozen backbone
    label_smoothing: float = 0.0  # binary cross-entropy label smoothing, 0..0.5
    val_fold: int | None = 0  # training fold held out for validation; None: train on all
    seed: int = 0  # seeds weights, shuffling and augmentation
    mixed_precision: bool = False  # float16 compute on a GPU (ignored on CPU)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _HINTS[f.name])
            if _HINTS[f.name] is float:  # 1 -> 1.0, so config.json is typed the same
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
        rules: list[tuple[str, bool, str]] = [
            ("weights", self.weights in WEIGHTS, f"one of {WEIGHTS}"),
            ("image_size", 16 <= self.image_size <= 1024, "between 16 and 1024"),
            ("batch_size", 1 <= self.batch_size <= 4096, "between 1 and 4096"),
            ("epochs", 1 <= self.epochs <= 1000, "between 1 and 1000"),
            ("learning_rate", 0 < self.learning_rate <= 1, "in (0, 1]"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}"),
            ("lr_schedule", self.lr_schedule in SCHEDULES, f"one of {SCHEDULES}"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= 100, "between 0 and 100"),
            ("schedule_epochs", self.schedule_epochs == 0 or self.schedule_epochs >= self.epochs,
             f"0 (the epochs) or at least epochs={self.epochs}"),
            ("weight_decay", 0 <= self.weight_decay < 1, "in [0, 1)"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("augment_strength", 0 <= self.augment_strength <= 1, "in [0, 1]"),
            ("class_weight", self.class_weight in CLASS_WEIGHTS, f"one of {CLASS_WEIGHTS}"),
            ("stain_jitter", 0 <= self.stain_jitter <= 1, "in [0, 1]"),
            ("grayscale", 0 <= self.grayscale <= 1, "a probability in [0, 1]"),
            ("mixup", 0 <= self.mixup <= 10, "in [0, 10]"),
            ("normalize", self.normalize in NORMALIZE, f"one of {NORMALIZE}"),
            ("freeze_epochs", 0 <= self.freeze_epochs < self.epochs,
             f"in [0, epochs={self.epochs})"),
            ("label_smoothing", 0 <= self.label_smoothing <= 0.5, "in [0, 0.5]"),
            ("val_fold", self.val_fold is None or 0 <= self.val_fold <= 9,
             "a fold number 0-9 or none"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: must be {rule}")
        from leukemia.models import backbone_spec  # light: no TensorFlow import

        spec = backbone_spec(self.backbone)
        if self.image_size < spec.min_size:
            raise ValueError(f"TrainConfig.image_size={self.image_size}: {self.backbone} needs "
                             f"at least {spec.min_size} px")
        if self.image_size % spec.multiple_of:
            raise ValueError(f"TrainConfig.image_size={self.image_size}: {self.backbone} needs "
                             f"a multiple of {spec.multiple_of}")
        if self.weights == "imagenet" and not spec.pretrained:
            raise ValueError(f"TrainConfig.weights='imagenet': {self.backbone} has no pretrained "
                             "weights; use weights=none")
        if self.freeze_epochs and self.weights != "imagenet":
            raise ValueError(f"TrainConfig.freeze_epochs={self.freeze_epochs}: freezing only "
                             "makes sense for a pretrained backbone (weights=imagenet)")

    def override(self, items: list[str] | dict[str, Any]) -> TrainConfig:
        """Return a copy with ``key=value`` strings (or a dict) applied, type-checked."""
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        pairs = items.items() if isinstance(items, dict) else (_split(i) for i in items)
        for key, value in pairs:
            if key not in known:
                raise ValueError(f"unknown TrainConfig key {key!r}; known keys: "
                                 f"{', '.join(sorted(known))}")
            changes[key] = _parse(key, value, _HINTS[key]) if isinstance(value, str) else value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a loaded config.json); unknown keys are an error."""
        return cls().override(dict(d))


_HINTS = typing.get_type_hints(TrainConfig)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _parse(key: str, value: str, hint: Any) -> Any:
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[...]
        if value.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(value)
            return low in ("true", "1", "yes", "on")
        return hint(value)
    except ValueError:
        raise ValueError(f"TrainConfig.{key}={value!r}: expected {hint.__name__}") from None


def _check_type(name: str, value: Any, hint: Any) -> None:
    args = typing.get_args(hint)
    allowed = tuple(a for a in args) if args else (hint,)
    if value is None and type(None) in allowed:
        return
    if isinstance(value, bool) and bool not in allowed:
        raise ValueError(f"TrainConfig.{name}={value!r}: expected "
                         f"{' or '.join(a.__name__ for a in allowed)}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, allowed):
        raise ValueError(f"TrainConfig.{name}={value!r}: expected "
                         f"{' or '.join(a.__name__ for a in allowed)}")
