"""``SearchSettings``: what every trial and the final step share, fixed for one search.

Built once by ``search/run.py`` from its flags and handed to each trial (``tune.with_parameters``)
and to each final training task; a frozen dataclass, so a key that does not exist is an error at
the line that reads it rather than a ``KeyError`` deep inside a worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from leukemia.config import TrainConfig
from leukemia.imaging import DEFAULT_CROP, DEFAULT_SIZE, DEFAULT_WINDOW


@dataclass(frozen=True)
class SearchSettings:
    """A search's fixed settings (flags of ``search/run.py``)."""

    store: str  # the image store every worker reads (path or URI)
    image_size: int = DEFAULT_SIZE  # model input side in px
    batch_size: int = TrainConfig.batch_size  # images per step
    max_epochs: int = 20  # the epoch budget: ASHA's max_t, and the learning-rate decay horizon
    weights: str = "none"  # "imagenet" or "none" (random init)
    val_fold: int = 0  # the training fold a trial holds out for its score
    seed: int = 0  # seeds the sampler, the trials and the final trainings
    mixed_precision: bool = False  # float16 compute on GPUs
    trials_per_gpu: int = 0  # trials sharing one GPU (0: CPU trials)
    cpus_per_trial: int = 1  # CPU threads each trial's TensorFlow may use
    plugins: tuple[str, ...] = field(default_factory=tuple)  # files imported in every worker
    crop: str = DEFAULT_CROP  # how the store's images were cropped (recorded in the model)
    window: int | None = DEFAULT_WINDOW  # the window crop's side in px of the original frame
    tta: bool = True  # the exported model averages the 8 flips/rotations of a cell
    # the exported decision rule: "0.5" (balanced class weights, cut at 0.5), "oof" (the
    # wF1-maximising threshold on out-of-fold predictions) or "prior" (transductive prior
    # matching, threshold 0.5 below leukemia.rules.MIN_BATCH cells). 0.5 transferred best of
    # the per-cell rules to new patients (benchmarks/quality.py, PERFORMANCE.md)
    decision_rule: str = "0.5"

    def __post_init__(self) -> None:
        if self.decision_rule not in ("0.5", "oof", "prior"):
            raise ValueError(f"SearchSettings.decision_rule={self.decision_rule!r}: expected "
                             "0.5, oof or prior")
        if self.max_epochs < 1:
            raise ValueError(f"SearchSettings.max_epochs={self.max_epochs}: must be at least 1")
        if self.trials_per_gpu < 0 or self.cpus_per_trial < 1:
            raise ValueError(f"SearchSettings: trials_per_gpu={self.trials_per_gpu} and "
                             f"cpus_per_trial={self.cpus_per_trial} must be >= 0 and >= 1")

    def train_overrides(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields these settings fix for every trial."""
        return {"image_size": self.image_size, "batch_size": self.batch_size,
                "epochs": self.max_epochs, "schedule_epochs": self.max_epochs,
                "weights": self.weights, "val_fold": self.val_fold, "seed": self.seed,
                "mixed_precision": self.mixed_precision}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
