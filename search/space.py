"""The search space: a define-by-run Optuna function (no computation inside).

Knobs, in the tuning playbook's terms:

- scientific (what the search is for): ``backbone``.
- nuisance (tuned so each backbone is compared at its best): ``learning_rate`` (log scale),
  ``augment`` and, only when it is on, ``augment_strength``; ``class_weight``; ``dropout``;
  ``weight_decay`` (log scale, AdamW); ``label_smoothing``; and, only for a pretrained backbone
  (``weights=imagenet``), ``freeze_epochs_<backbone>`` (branch-specific name: each backbone
  gets its own distribution).
- fixed per search (flags of ``search/run.py``): ``batch_size``, ``image_size``, the epoch
  budget (ASHA's ``max_t``), ``weights``, ``val_fold``, ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Backbones searched by default: cheap enough to train many trials of on one GPU.
DEFAULT_BACKBONES = ("small_cnn", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                     "resnet50", "inception_v3", "vgg19", "densenet121", "unet")

LR_RANGE = (1e-4, 3e-3)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
DROPOUT_RANGE = (0.0, 0.5)
STRENGTH_RANGE = (0.1, 1.0)
SMOOTHING_RANGE = (0.0, 0.1)
CLASS_WEIGHTS = ("none", "balanced")


def define_space(trial: Any, backbones: Sequence[str], weights: str = "none",
                 max_epochs: int = 10) -> None:
    """Suggest one configuration on an Optuna ``trial`` (define-by-run).

    Args:
        trial: an ``optuna.Trial`` (or Ray's wrapper of one).
        backbones: the backbones to choose among.
        weights: ``"none"`` or ``"imagenet"`` (fixed for the search).
        max_epochs: the epoch budget; bounds ``freeze_epochs``.
    """
    backbone = trial.suggest_categorical("backbone", list(backbones))
    trial.suggest_float("learning_rate", *LR_RANGE, log=True)
    if trial.suggest_categorical("augment", [True, False]):
        trial.suggest_float("augment_strength", *STRENGTH_RANGE)
    trial.suggest_categorical("class_weight", list(CLASS_WEIGHTS))
    trial.suggest_float("dropout", *DROPOUT_RANGE)
    trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
    trial.suggest_float("label_smoothing", *SMOOTHING_RANGE)
    if weights == "imagenet" and backbone not in ("small_cnn", "unet") and max_epochs > 1:
        trial.suggest_int(f"freeze_epochs_{backbone}", 0, min(3, max_epochs - 1))


def to_train_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Map sampled parameters to ``TrainConfig`` fields (branch-specific names folded back)."""
    out = {}
    for key, value in params.items():
        if key.startswith("freeze_epochs_"):
            key = "freeze_epochs"
        out[key] = value
    if not out.get("augment", True):
        out.pop("augment_strength", None)
    out.setdefault("optimizer", "adamw")
    return out
