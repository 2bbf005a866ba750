"""Tests for leukemia.adapt: BatchNorm statistics re-estimated on the cells being predicted."""

from __future__ import annotations

import numpy as np
import pytest

from leukemia.adapt import MIN_CELLS, adapted_batchnorm, batchnorm_layers
from leukemia.models import create_backbone, export_model
from leukemia.train import predict_proba


def _cells(n: int, size: int, seed: int, bright: int) -> np.ndarray:
    """Dark background with a brighter disc: a crude cell, ``bright`` sets its stain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    img = rng.integers(0, 30, (n, size, size, 3))
    img[:, disc] += bright + rng.integers(0, 40, (n, int(disc.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_first_layer_statistics_become_those_of_the_pooled_cells_and_are_restored():
    import keras

    keras.backend.clear_session()
    model = create_backbone("small_cnn", image_size=32)
    bn = batchnorm_layers(model)[0]
    before = (bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy(), bn.momentum)
    cells = _cells(150, 32, 0, 120)
    p_before = predict_proba(model, cells)
    # what the first BatchNorm sees: the conv in front of it, on the preprocessed cells
    probe = keras.Model(model.inputs, model.get_layer("block1_conv").output)
    with adapted_batchnorm(model, cells, batch_size=64) as n:
        assert n == len(batchnorm_layers(model)) == 4
        x = np.asarray(probe(cells.astype("float32"), training=False))
        np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=(0, 1, 2)),
                                   rtol=1e-3, atol=1e-4)
        assert not np.allclose(predict_proba(model, cells), p_before)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), before[1])
    assert bn.momentum == before[2]
    np.testing.assert_allclose(predict_proba(model, cells), p_before, atol=1e-6)


def test_shifted_stain_moves_the_statistics_with_it():
    import keras

    keras.backend.clear_session()
    model = create_backbone("small_cnn", image_size=32)
    bn = batchnorm_layers(model)[0]
    means = []
    for bright in (60, 180):
        with adapted_batchnorm(model, _cells(120, 32, 1, bright)):
            means.append(np.abs(bn.moving_mean.numpy()).mean())
    assert means[1] > means[0] * 1.5  # brighter cells, larger first-layer activations


def test_groupnorm_model_and_empty_batch_have_nothing_to_adapt():
    import keras

    keras.backend.clear_session()
    with adapted_batchnorm(create_backbone("small_cnn_gn", image_size=32),
                           _cells(10, 32, 0, 100)) as n:
        assert n == 0
    with adapted_batchnorm(create_backbone("small_cnn", image_size=32),
                           np.zeros((0, 32, 32, 3), np.uint8)) as n:
        assert n == 0


@pytest.mark.parametrize("members", [1, 2])
def test_the_exported_ensemble_adapts_every_member(members):
    import keras

    keras.backend.clear_session()
    nets = [create_backbone("small_cnn", image_size=32) for _ in range(members)]
    model = export_model(nets, crop="none", window=None)
    assert len(batchnorm_layers(model)) == 4 * members


# ---------------------------------------------------------------------------------------------
# leukemia predict --adapt-bn, on real cells


def _export(path, seed: int = 0):
    import keras

    from leukemia.train import save_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    save_model(export_model([create_backbone("small_cnn", image_size=32)], crop="cell",
                            window=None, tta=True), path)
    return path


def _scores(capsys, argv):
    from leukemia.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr()
    return np.array([float(line.split("\t")[1]) for line in out.out.strip().splitlines()]), out.err


@pytest.fixture(scope="module")
def many_cells(real_data):
    files = sorted((real_data / "C-NMC_Leukemia" / "training_data").rglob("*.bmp"))
    assert len(files) >= MIN_CELLS + 10, len(files)
    return files[:MIN_CELLS + 10]


def test_predict_adapt_bn_scores_with_the_pooled_cells_statistics(tmp_path, capsys, many_cells):
    from leukemia.imaging import decode_image
    from leukemia.models import load_model

    path = _export(tmp_path / "m.keras")
    plain, _ = _scores(capsys, ["predict", str(path), *map(str, many_cells)])
    adapted, err = _scores(capsys, ["predict", str(path), *map(str, many_cells), "--adapt-bn"])
    assert "BatchNorm layers' statistics re-estimated on these 110 cells (transductive)" in err
    model = load_model(str(path))
    pixels = np.stack([decode_image(str(f), 32, "cell")[0] for f in many_cells])
    with adapted_batchnorm(model, pixels) as n:
        assert n == 4
        expected = predict_proba(model, pixels)
    np.testing.assert_allclose(adapted, expected, atol=2e-4)  # printed to 4 decimals
    np.testing.assert_allclose(plain, predict_proba(model, pixels), atol=2e-4)
    assert np.abs(adapted - plain).max() > 0.01


def test_predict_adapt_bn_below_the_minimum_keeps_the_models_statistics(tmp_path, capsys,
                                                                        many_cells):
    path = _export(tmp_path / "m.keras")
    few = list(map(str, many_cells[:12]))
    plain, _ = _scores(capsys, ["predict", str(path), *few])
    adapted, err = _scores(capsys, ["predict", str(path), *few, "--adapt-bn"])
    assert f"--adapt-bn: 12 cells, fewer than {MIN_CELLS}" in err
    np.testing.assert_array_equal(adapted, plain)
