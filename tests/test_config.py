"""Tests for leukemia.config: defaults, typed overrides, one check per validation rule."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import fields

import pytest

from leukemia.config import TrainConfig
from leukemia.models import list_backbones


def test_trainconfig_defaults_are_valid():
    c = TrainConfig()
    assert c.backbone in list_backbones()
    assert c.weights == "none"
    assert c.val_fold == 0
    assert 1 <= c.batch_size and 1 <= c.epochs
    assert TrainConfig(**c.to_dict()) == c


def test_trainconfig_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# override


def test_override_parses_int():
    c = TrainConfig().override(["epochs=3", "batch_size= 8 "])
    assert c.epochs == 3 and type(c.epochs) is int
    assert c.batch_size == 8


def test_override_parses_float():
    c = TrainConfig().override(["learning_rate=3e-4", "dropout=0"])
    assert c.learning_rate == pytest.approx(3e-4) and type(c.learning_rate) is float
    assert c.dropout == 0.0 and type(c.dropout) is float


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("1", True),
                                         ("0", False), ("yes", True), ("off", False)])
def test_override_parses_bool(text, value):
    assert TrainConfig().override([f"augment={text}"]).augment is value


def test_override_parses_str():
    c = TrainConfig().override(["backbone=unet", "optimizer=sgd"])
    assert c.backbone == "unet" and c.optimizer == "sgd"


@pytest.mark.parametrize("text", ["none", "None", "null"])
def test_override_parses_optional_none(text):
    assert TrainConfig().override([f"val_fold={text}"]).val_fold is None


def test_override_parses_optional_int():
    c = TrainConfig().override(["val_fold=2"])
    assert c.val_fold == 2 and type(c.val_fold) is int


def test_override_accepts_a_dict():
    c = TrainConfig().override({"epochs": 4, "learning_rate": "0.01", "val_fold": None})
    assert (c.epochs, c.learning_rate, c.val_fold) == (4, 0.01, None)


def test_override_returns_a_copy():
    base = TrainConfig()
    changed = base.override(["epochs=2"])
    assert base.epochs == TrainConfig().epochs
    assert changed.epochs == 2


def test_override_rejects_bad_int():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.epochs='three': expected int")):
        TrainConfig().override(["epochs=three"])


def test_override_rejects_bad_float():
    with pytest.raises(ValueError,
                       match=re.escape("TrainConfig.learning_rate='fast': expected float")):
        TrainConfig().override(["learning_rate=fast"])


def test_override_rejects_bad_bool():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.augment='maybe': expected bool")):
        TrainConfig().override(["augment=maybe"])


def test_override_rejects_bad_optional_int():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.val_fold='first': expected int")):
        TrainConfig().override(["val_fold=first"])


def test_override_rejects_item_without_equals():
    with pytest.raises(ValueError, match="'epochs3': expected key=value"):
        TrainConfig().override(["epochs3"])


def test_override_unknown_key_lists_known_keys():
    with pytest.raises(ValueError, match="unknown TrainConfig key 'lr'") as info:
        TrainConfig().override(["lr=0.1"])
    message = str(info.value)
    for f in fields(TrainConfig):
        assert f.name in message


def test_override_validates_the_result():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.epochs=0")):
        TrainConfig().override(["epochs=0"])


# ---------------------------------------------------------------------------------------------
# __post_init__: one case per rule; the message names the field and the value


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": "random"}, "TrainConfig.weights='random': must be one of"),
    ({"image_size": 8}, "TrainConfig.image_size=8: must be between 16 and 1024"),
    ({"batch_size": 0}, "TrainConfig.batch_size=0: must be between 1 and 4096"),
    ({"epochs": 0}, "TrainConfig.epochs=0: must be between 1 and 1000"),
    ({"learning_rate": 0.0}, "TrainConfig.learning_rate=0.0: must be in (0, 1]"),
    ({"optimizer": "rmsprop"}, "TrainConfig.optimizer='rmsprop': must be one of"),
    ({"lr_schedule": "step"}, "TrainConfig.lr_schedule='step': must be one of"),
    ({"warmup_epochs": -1}, "TrainConfig.warmup_epochs=-1: must be between 0 and 100"),
    ({"warmup_epochs": 101}, "TrainConfig.warmup_epochs=101: must be between 0 and 100"),
    ({"schedule_epochs": 5, "epochs": 6},
     "TrainConfig.schedule_epochs=5: must be 0 (the epochs) or at least epochs=6"),
    ({"weight_decay": 1.0}, "TrainConfig.weight_decay=1.0: must be in [0, 1)"),
    ({"dropout": 1.0}, "TrainConfig.dropout=1.0: must be in [0, 1)"),
    ({"augment_strength": 1.5}, "TrainConfig.augment_strength=1.5: must be in [0, 1]"),
    ({"class_weight": "inverse"}, "TrainConfig.class_weight='inverse': must be one of"),
    ({"freeze_epochs": 3, "epochs": 3}, "TrainConfig.freeze_epochs=3: must be in [0, epochs=3)"),
    ({"label_smoothing": 0.6}, "TrainConfig.label_smoothing=0.6: must be in [0, 0.5]"),
    ({"val_fold": 10}, "TrainConfig.val_fold=10: must be a fold number 0-9 or none"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else "")
def test_trainconfig_rejects_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**kwargs)


def test_trainconfig_schedule_accepts_its_valid_values():
    assert TrainConfig().lr_schedule == "cosine"  # the default
    assert TrainConfig(lr_schedule="constant").lr_schedule == "constant"
    assert TrainConfig(warmup_epochs=0).warmup_epochs == 0
    assert TrainConfig(epochs=6, schedule_epochs=0).schedule_epochs == 0  # 0: the epochs
    assert TrainConfig(epochs=6, schedule_epochs=6).schedule_epochs == 6
    assert TrainConfig(epochs=2, schedule_epochs=20).schedule_epochs == 20  # a trial of ASHA's


def test_trainconfig_rejects_wrong_type():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.epochs='3': expected int")):
        TrainConfig(epochs="3")  # type: ignore[arg-type]


def test_trainconfig_rejects_bool_for_int():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.batch_size=True: expected int")):
        TrainConfig(batch_size=True)


def test_trainconfig_freeze_epochs_needs_imagenet():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.freeze_epochs=1: freezing only "
                                                   "makes sense for a pretrained backbone")):
        TrainConfig(freeze_epochs=1, epochs=2)


def test_trainconfig_freeze_epochs_with_imagenet_is_valid():
    c = TrainConfig(backbone="mobilenet_v3_small", weights="imagenet", freeze_epochs=1, epochs=2)
    assert c.freeze_epochs == 1


def test_trainconfig_unknown_backbone_lists_available():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'") as info:
        TrainConfig(backbone="resnet9000")
    for name in list_backbones():
        assert name in str(info.value)


def test_trainconfig_image_size_below_backbone_minimum():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.image_size=64: inception_v3 "
                                                   "needs at least 75 px")):
        TrainConfig(backbone="inception_v3", image_size=64)


def test_trainconfig_imagenet_needs_a_pretrained_backbone():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.weights='imagenet': small_cnn has "
                                                   "no pretrained weights; use weights=none")):
        TrainConfig(backbone="small_cnn", weights="imagenet")


# ---------------------------------------------------------------------------------------------
# serialisation


def test_trainconfig_json_round_trip():
    c = TrainConfig().override(["backbone=unet", "image_size=64", "learning_rate=3e-4",
                                "augment=false", "val_fold=none", "class_weight=sqrt", "seed=7"])
    back = TrainConfig.from_dict(json.loads(c.to_json()))
    assert back == c
    assert json.loads(back.to_json()) == c.to_dict()


def test_trainconfig_from_dict_rejects_unknown_key():
    d = {**TrainConfig().to_dict(), "momentum": 0.9}
    with pytest.raises(ValueError, match="unknown TrainConfig key 'momentum'"):
        TrainConfig.from_dict(d)
