"""leukemia: the domain library of cnmc-search (C-NMC 2019 blast vs normal cell classifiers).

Reads the C-NMC folders (``dataset``), decodes and crops the frames (``imaging``), builds and
reads the Parquet image store (``store``), splits it by patient (``folds``), and trains and
scores one configuration (``config``, ``models``, ``pipeline``, ``train``, ``evaluate``,
``metrics``); ``files`` writes results whole or not at all. It never imports Ray or Optuna
(that is ``search/``), and importing it does not import TensorFlow: building a model or
training does.
"""

from __future__ import annotations

from leukemia.config import TrainConfig
from leukemia.dataset import DatasetError, Record, scan
from leukemia.folds import PatientLeakError
from leukemia.metrics import binary_metrics, weighted_f1
from leukemia.models import create_backbone, list_backbones, load_model, register_backbone
from leukemia.store import Selection, Store, StoreError, ingest
from leukemia.train import FitResult, fit, train_and_save

__all__ = [
    "DatasetError", "FitResult", "PatientLeakError", "Record", "Selection", "Store",
    "StoreError", "TrainConfig", "binary_metrics", "create_backbone", "fit", "ingest",
    "list_backbones", "load_model", "register_backbone", "scan", "train_and_save", "weighted_f1",
]
