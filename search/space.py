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

The default backbones depend on ``(image_size, weights)``: from random init, those measured to
leave a constant prediction at that size (``SCRATCH_CONSTANT``) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Backbones searched by default: cheap enough to train many trials of on one GPU.
DEFAULT_BACKBONES = ("small_cnn", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                     "resnet50", "inception_v3", "vgg19", "densenet121", "unet")
# Per backbone, the largest image side (px) at which it was measured to stay at a constant
# prediction from random initialisation (search.trainable.is_constant at the last of 3 epochs:
# one class for every held-out cell, AUC within 0.02 of 0.5; 600 dev-set cells, whole patients
# held out; vgg19, resnet50, densenet121 and inception_v3 measured at 32 px only):
#     python benchmarks/scratch.py --sizes 32,96 --heavy-up-to 32
# With --weights none the default space leaves a backbone out at sizes up to its entry: its
# trials would only be stopped as constant at ASHA's first rung. Sizes above it were not
# measured (or it got away from the constant there), so it stays in; ImageNet weights keep all.
SCRATCH_CONSTANT: dict[str, int] = {"mobilenet_v3_large": 32, "mobilenet_v3_small": 96}

LR_RANGE = (1e-4, 3e-3)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
DROPOUT_RANGE = (0.0, 0.5)
STRENGTH_RANGE = (0.1, 1.0)
SMOOTHING_RANGE = (0.0, 0.1)
# the class weightings searched: a subset of leukemia.config.CLASS_WEIGHTS (whose "sqrt" is a
# trainer option the search does not sample)
SEARCHED_CLASS_WEIGHTS = ("none", "balanced")


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
    trial.suggest_categorical("class_weight", list(SEARCHED_CLASS_WEIGHTS))
    trial.suggest_float("dropout", *DROPOUT_RANGE)
    trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
    trial.suggest_float("label_smoothing", *SMOOTHING_RANGE)
    if weights == "imagenet" and backbone not in ("small_cnn", "unet") and max_epochs > 1:
        trial.suggest_int(f"freeze_epochs_{backbone}", 0, min(3, max_epochs - 1))


def scratch_constant(backbone: str, image_size: int, weights: str = "none") -> bool:
    """Whether ``backbone`` was measured to stay constant from random init at ``image_size``."""
    return weights == "none" and image_size <= SCRATCH_CONSTANT.get(backbone, 0)


def default_backbones(image_size: int, weights: str = "none") -> list[str]:
    """``DEFAULT_BACKBONES`` less those :func:`scratch_constant` at this size and weights."""
    return [b for b in DEFAULT_BACKBONES if not scratch_constant(b, image_size, weights)]


def scratch_note(backbones: Sequence[str]) -> str:
    """Which of ``backbones`` stayed constant from random init, and up to what size."""
    sizes = ", ".join(f"{b} (up to {SCRATCH_CONSTANT[b]} px)" for b in backbones)
    return (f"{sizes}: stayed constant from random init (one class for every held-out cell, no "
            "ranking, after 3 epochs: benchmarks/scratch.py, search/space.py SCRATCH_CONSTANT); "
            "--weights imagenet or a larger --image-size may train")


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
