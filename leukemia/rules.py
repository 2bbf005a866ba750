"""Decision rules: how P(ALL) becomes a class, per cell or over the batch being predicted.

    >>> decide(p, Rule("threshold", threshold=0.5))          # per cell: ALL where p >= 0.5
    >>> decide(p, Rule("prior", prior=0.68, min_batch=100))  # transductive: top 68% called ALL

Rules (``RULES``):

- ``threshold``: a fixed cut, decided per cell (0.5, or one chosen on out-of-fold predictions).
- ``prior`` (transductive, Pan et al., C-NMC 2019 winner): the share of the batch called ALL
  matches the training prior: cells at or above the batch's ``1 - prior`` quantile are ALL.
- ``em`` (transductive, Saerens et al. 2002): the batch's ALL prior is re-estimated by EM from
  the model's posteriors (trained at ``train_prior``; 0.5 with balanced class weights), and a
  cell is ALL where its prior-adjusted posterior is >= 0.5.

A transductive rule needs a batch of at least ``min_batch`` cells (their scores define the
cut); on a smaller batch it falls back to ``threshold`` and says so. Every decision returns the
cut it used, so output can say which rule decided and at what P(ALL).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RULES = ("threshold", "prior", "em")
TRANSDUCTIVE = ("prior", "em")
MIN_BATCH = 100  # cells a transductive rule needs before its cut is trusted over the fallback


@dataclass(frozen=True)
class Rule:
    """A decision rule and its parameters (stored in the exported model)."""

    name: str = "threshold"  # one of RULES
    threshold: float = 0.5  # the cut of "threshold", and every rule's fallback on a small batch
    prior: float = 0.5  # share of ALL cells in training ("prior")
    train_prior: float = 0.5  # prior the posteriors are calibrated to ("em"; 0.5 if balanced)
    min_batch: int = MIN_BATCH  # smallest batch a transductive rule decides on its own

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"decision rule {self.name!r}: expected one of {', '.join(RULES)}")
        for key in ("threshold", "prior", "train_prior"):
            v = getattr(self, key)
            if not 0.0 < float(v) < 1.0 and not (key == "threshold" and 0.0 <= v <= 1.0):
                span = "[0, 1]" if key == "threshold" else "(0, 1)"
                raise ValueError(f"decision rule {self.name}: {key}={v!r} must be in {span}")
        if self.min_batch < 1:
            raise ValueError(f"decision rule {self.name}: min_batch={self.min_batch} must be "
                             ">= 1")

    @property
    def transductive(self) -> bool:
        return self.name in TRANSDUCTIVE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Rule:
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        """One line for output: which rule decided and with what."""
        if self.name == "threshold":
            return f"threshold {self.threshold:.3f}"
        if self.name == "prior":
            return (f"prior matching (transductive: {self.prior:.0%} of the batch called ALL; "
                    f"threshold {self.threshold:.3f} below {self.min_batch} cells)")
        return (f"EM prior re-estimation (transductive; threshold {self.threshold:.3f} below "
                f"{self.min_batch} cells)")


@dataclass(frozen=True)
class Decision:
    """Classes of a batch and how they were decided."""

    classes: np.ndarray  # 0/1 per cell
    cut: float  # the P(ALL) at or above which a cell was called ALL
    rule: str  # the rule that decided (the fallback's name when a batch was too small)
    note: str  # one line for the output


def decide(p: np.ndarray, rule: Rule) -> Decision:
    """Classes for the scores ``p`` of one batch under ``rule``."""
    p = np.asarray(p, dtype=float).reshape(-1)
    if rule.transductive and len(p) < rule.min_batch:
        cut = rule.threshold
        return Decision((p >= cut).astype(np.int64), cut, "threshold",
                        f"{rule.name} needs >= {rule.min_batch} cells, the batch has {len(p)}: "
                        f"threshold {cut:.3f} decided")
    if rule.name == "threshold":
        cut = rule.threshold
        note = f"threshold {cut:.3f}"
    elif rule.name == "prior":
        cut = prior_cut(p, rule.prior)
        note = f"prior matching over {len(p)} cells: {rule.prior:.0%} called ALL, cut {cut:.3f}"
    else:
        prior = em_prior(p, rule.train_prior)
        cut = em_cut(prior, rule.train_prior)
        note = (f"EM over {len(p)} cells: estimated ALL prior {prior:.3f}, cut {cut:.3f}")
    return Decision((p >= cut).astype(np.int64), float(cut), rule.name, note)


def prior_cut(p: np.ndarray, prior: float) -> float:
    """The P(ALL) above which ``prior`` of the batch lies (ties: all tied cells go one way)."""
    p = np.sort(np.asarray(p, dtype=float))
    k = int(round(len(p) * (1.0 - prior)))  # cells called normal
    if k <= 0:
        return float(p[0]) if len(p) else 0.5
    if k >= len(p):
        return float(np.nextafter(p[-1], np.inf))
    return float(p[k])


def em_prior(p: np.ndarray, train_prior: float = 0.5, iters: int = 100,
             tol: float = 1e-6) -> float:
    """Saerens et al. (2002): the batch's ALL prior that makes the adjusted posteriors
    self-consistent, starting from the training prior."""
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    pi0, pi = float(train_prior), float(train_prior)
    for _ in range(iters):
        a, b = pi / pi0 * p, (1 - pi) / (1 - pi0) * (1 - p)
        new = float(np.mean(a / (a + b)))
        new = min(max(new, 1e-4), 1 - 1e-4)
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def em_cut(prior: float, train_prior: float = 0.5) -> float:
    """The raw P(ALL) at which the adjusted posterior is 0.5 under ``prior``."""
    # adjusted >= 0.5  <=>  prior/pi0 * p >= (1 - prior)/(1 - pi0) * (1 - p)
    r = (prior / train_prior) / ((1 - prior) / (1 - train_prior))
    return float(1.0 / (1.0 + r))
