"""Tests for the decision rules (``leukemia.rules``) against hand-computed cuts: the threshold,
prior matching, EM prior re-estimation (Saerens et al. 2002), the fallback on a small batch,
the validation of a Rule and its round trip through a dict.

    .venv/bin/python -m pytest -q tests/test_rules.py
"""

from __future__ import annotations

import numpy as np
import pytest

from leukemia.rules import Rule, decide, em_cut, em_prior, prior_cut

# ten distinct scores, shuffled: sorted they are 0.1, 0.2, ..., 1.0
TEN = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6])


def _mixture(n_high: int, n_low: int) -> np.ndarray:
    """Posteriors (calibrated at prior 0.5) of cells of two kinds: likelihood ratio 4 or 1/4.

    A kind seen in 80% of ALL cells and 20% of normal ones has posterior 0.8 at prior 0.5, the
    other 0.2; in a batch of ALL share pi the high kind's share is 0.2 + 0.6 * pi, so 35 high
    and 65 low cells are a batch of pi = 0.25, the fixed point of EM (0.35 * 4pi / (1 + 3pi) +
    0.65 * pi / (4 - 3pi) = pi at pi = 0.25).
    """
    return np.array([0.8] * n_high + [0.2] * n_low)


# ---------------------------------------------------------------------------------------------
# prior matching


def test_prior_cut_calls_the_prior_share_of_the_batch_all():
    # 10 cells, prior 0.3: round(10 * 0.7) = 7 called normal, the cut is the 8th smallest
    assert prior_cut(TEN, 0.3) == pytest.approx(0.8)
    assert (TEN >= prior_cut(TEN, 0.3)).sum() == 3
    assert prior_cut(TEN, 0.6) == pytest.approx(0.5)  # round(4.0) = 4 normal: 0.5 and up ALL


def test_prior_cut_sends_tied_cells_to_all():
    p = np.array([0.5, 0.1, 0.5, 0.9, 0.2, 0.5])  # prior 0.5: 3 normal wanted, 0.5 is tied
    assert prior_cut(p, 0.5) == 0.5
    assert (p >= prior_cut(p, 0.5)).sum() == 4


def test_prior_cut_at_the_extremes_calls_every_cell_or_none():
    assert prior_cut(TEN, 0.99) == pytest.approx(0.1)  # round(0.1) = 0 normal: every cell ALL
    cut = prior_cut(TEN, 0.01)  # round(9.9) = 10 normal: none ALL
    assert cut > 1.0 - 1e-12 and not (TEN >= cut).any()


def test_decide_prior_on_a_batch_large_enough():
    d = decide(TEN, Rule("prior", prior=0.3, min_batch=10))
    assert d.rule == "prior" and d.cut == pytest.approx(0.8)
    assert d.classes.tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    assert d.note.startswith("prior matching over 10 cells: 30% called ALL, cut 0.800")


# ---------------------------------------------------------------------------------------------
# EM prior re-estimation


@pytest.mark.parametrize(("n_high", "n_low", "prior"), [(35, 65, 0.25), (65, 35, 0.75),
                                                        (50, 50, 0.5)])
def test_em_prior_recovers_the_batch_prior_of_a_known_mixture(n_high, n_low, prior):
    assert em_prior(_mixture(n_high, n_low), 0.5) == pytest.approx(prior, abs=1e-4)


def test_em_cut_is_where_the_prior_adjusted_posterior_is_half():
    # r = (prior / pi0) / ((1 - prior) / (1 - pi0)); cut = 1 / (1 + r)
    assert em_cut(0.25, 0.5) == pytest.approx(0.75)  # r = 1/3
    assert em_cut(0.8, 0.5) == pytest.approx(0.2)  # r = 4
    assert em_cut(0.5, 0.5) == pytest.approx(0.5)
    assert em_cut(0.68, 0.68) == pytest.approx(0.5)  # the training prior keeps the 0.5 cut
    assert em_cut(0.5, 0.8) == pytest.approx(0.8)  # r = 1/4


def test_decide_em_calls_the_cells_above_the_adjusted_cut():
    p = _mixture(35, 65)
    d = decide(p, Rule("em", min_batch=100))
    assert d.rule == "em" and d.cut == pytest.approx(0.75, abs=1e-3)
    assert d.classes.sum() == 35  # the 0.8 cells; at 0.5 the 0.2 cells stay normal too
    assert "estimated ALL prior 0.250" in d.note


# ---------------------------------------------------------------------------------------------
# the threshold, and the fallback of a transductive rule below min_batch


def test_decide_threshold_is_per_cell():
    d = decide(TEN, Rule("threshold", threshold=0.55))
    assert d.classes.tolist() == (TEN >= 0.55).astype(int).tolist()
    assert d.rule == "threshold" and d.cut == 0.55 and d.note == "threshold 0.550"
    assert decide(TEN, Rule(threshold=0.0)).classes.all()


@pytest.mark.parametrize("name", ["prior", "em"])
def test_decide_transductive_rule_below_min_batch_falls_back_to_the_threshold(name):
    d = decide(TEN, Rule(name, threshold=0.95, prior=0.3, min_batch=11))
    assert d.rule == "threshold" and d.cut == 0.95
    assert d.classes.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert d.note == f"{name} needs >= 11 cells, the batch has 10: threshold 0.950 decided"
    assert decide(TEN, Rule(name, threshold=0.95, prior=0.3, min_batch=10)).rule == name


# ---------------------------------------------------------------------------------------------
# validation and the round trip


def test_rule_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="'vote': expected one of threshold, prior, em"):
        Rule("vote")


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_rule_rejects_a_threshold_outside_0_1(value):
    with pytest.raises(ValueError, match=rf"threshold={value} must be in \[0, 1\]"):
        Rule(threshold=value)


@pytest.mark.parametrize("key", ["prior", "train_prior"])
@pytest.mark.parametrize("value", [0.0, 1.0, 1.2])
def test_rule_rejects_a_prior_outside_the_open_interval(key, value):
    with pytest.raises(ValueError, match=rf"em: {key}={value} must be in \(0, 1\)"):
        Rule("em", **{key: value})


def test_rule_rejects_min_batch_below_one():
    with pytest.raises(ValueError, match="min_batch=0 must be >= 1"):
        Rule("prior", min_batch=0)


def test_rule_threshold_may_be_0_or_1():
    assert Rule(threshold=0.0).threshold == 0.0 and Rule(threshold=1.0).threshold == 1.0


def test_rule_round_trips_through_its_dict():
    rule = Rule("em", threshold=0.4, prior=0.6, train_prior=0.55, min_batch=20)
    assert rule.to_dict() == {"name": "em", "threshold": 0.4, "prior": 0.6,
                              "train_prior": 0.55, "min_batch": 20}
    assert Rule.from_dict(rule.to_dict()) == rule
    assert rule.transductive and not Rule().transductive


def test_rule_from_dict_of_an_old_model_or_nothing():
    assert Rule.from_dict({"name": "threshold", "threshold": 0.3}) == Rule(threshold=0.3)
    assert Rule.from_dict(None) == Rule()
    assert Rule.from_dict({"name": "prior", "prior": 0.7, "added_later": 1}) == Rule(
        "prior", prior=0.7)
