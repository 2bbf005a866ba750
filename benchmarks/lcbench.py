"""YAHPO Gym's LCBench surrogate: learning curves for any configuration, as a replay table.

The surrogate (Pfisterer et al., "YAHPO Gym", 2022) is an ONNX network that maps an OpenML task,
an epoch and 7 hyperparameters of a funnel MLP to that epoch's validation accuracy (and the
time spent). It is read from ``$YAHPO_LCBENCH`` (default ``../shared/data/yahpo-lcbench``, see
its SOURCES.md; never copied here) with ``onnxruntime`` alone (the ``dev`` extra): yahpo-gym
itself pins numpy<2. :class:`LCTable` gives ``benchmarks/searchers.py`` what its stored table
gives it (curves by configuration, a define-by-run space, a Ray trainable), over the continuous
space of ``config_space.json``: epochs 2..51 (YAHPO's FAQ: epoch 1 is the untrained network,
52 repeats 51) are training iterations 1..50, and a configuration's score is its normalised
accuracy at epoch 51, ``(acc - min) / (max - min)`` with the task's min/max from
``global_statistics`` (1 - score is YAHPO's normalised regret).

    python benchmarks/lcbench.py 189906     # the task's curve at the space's defaults
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import REPO
from searchers import OBJECTIVE, Table

DATA = Path(os.environ.get("YAHPO_LCBENCH", REPO.parent / "shared" / "data" / "yahpo-lcbench"))
TASKS = ("167168", "189873", "189906")  # the YAHPO Gym paper's lcbench instances
FIRST, LAST = 2, 51  # the epochs used
# the model's continuous inputs, in order (SOURCES.md); the first is the epoch
INPUTS = ("epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers",
          "max_units", "max_dropout")
PARAMS = INPUTS[1:]


def missing(data: Path = DATA) -> str | None:
    """Why the surrogate cannot be used here (None when it can)."""
    if not (data / "lcbench" / "model.onnx").exists():
        return (f"{data}/lcbench/model.onnx not found: set YAHPO_LCBENCH to the yahpo-lcbench "
                "folder (../shared/data/yahpo-lcbench, see its SOURCES.md)")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed: pip install -e '.[dev]'"
    return None


@dataclass(frozen=True)
class Param:
    """One hyperparameter of ``config_space.json``."""

    name: str
    lower: float
    upper: float
    log: bool
    integer: bool


@functools.cache
def space(data: Path = DATA) -> tuple[Param, ...]:
    """The 7 hyperparameters, in the model's input order."""
    spec = json.loads((data / "lcbench" / "config_space.json").read_text())
    by = {h["name"]: h for h in spec["hyperparameters"]}
    return tuple(Param(n, by[n]["lower"], by[n]["upper"], bool(by[n]["log"]),
                       by[n]["type"].endswith("int")) for n in PARAMS)


@functools.cache
def _model(data: Path = DATA) -> tuple[Any, dict[str, int]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # one core per search
    session = ort.InferenceSession(str(data / "lcbench" / "model.onnx"), opts,
                                   providers=["CPUExecutionProvider"])
    codes = json.loads((data / "lcbench" / "encoding.json").read_text())["OpenML_task_id"]
    return session, codes


def curve(task: str, config: dict[str, Any], data: Path = DATA) -> tuple[list[float], list[float]]:
    """Validation accuracy (percent) and seconds of each epoch 2..51 of ``config`` on ``task``."""
    import numpy as np

    session, codes = _model(data)
    if task not in codes:
        raise ValueError(f"task {task!r} is not in {data}/lcbench/encoding.json; known: "
                         f"{', '.join(sorted(k for k in codes if k != '#na#'))}")
    epochs = np.arange(FIRST - 1, LAST + 1, dtype=np.float32)  # epoch 1 gives epoch 2's time
    x = np.empty((len(epochs), len(INPUTS)), dtype=np.float32)
    x[:, 0] = epochs
    x[:, 1:] = [float(config[p]) for p in PARAMS]
    out = session.run(None, {"x_cat": np.full((len(x), 1), codes[task], dtype=np.int32),
                             "x_cont": x})[0]
    seconds = np.maximum(np.diff(out[:, 0]), 0.0)  # the time output is cumulative
    return [float(v) for v in out[1:, 1]], [float(v) for v in seconds]


def final_accuracy(task: str, configs: list[dict[str, Any]], data: Path = DATA) -> list[float]:
    """Validation accuracy at epoch 51 of each configuration (one batched call)."""
    import numpy as np

    session, codes = _model(data)
    x = np.array([[LAST, *(float(c[p]) for p in PARAMS)] for c in configs], dtype=np.float32)
    out = session.run(None, {"x_cat": np.full((len(x), 1), codes[task], dtype=np.int32),
                             "x_cont": x})[0]
    return [float(v) for v in out[:, 1]]


@functools.cache
def bounds(task: str, data: Path = DATA) -> tuple[float, float]:
    """The task's (min, max) val_accuracy over YAHPO's evaluations (normalised regret)."""
    with open(data / "global_statistics" / "lcbench_target_statistics.csv") as fh:
        rows = {(r["statistic"], r["instance"]): float(r["value"]) for r in csv.DictReader(fh)
                if r["metric"] == "val_accuracy"}
    if ("min", task) not in rows:
        raise ValueError(f"task {task!r}: no val_accuracy statistics in {data}/global_statistics")
    return rows["min", task], rows["max", task]


def defaults(data: Path = DATA) -> dict[str, Any]:
    """The space's default configuration."""
    spec = json.loads((data / "lcbench" / "config_space.json").read_text())
    return {h["name"]: h["default"] for h in spec["hyperparameters"] if h["name"] in PARAMS}


def random_configs(n: int, seed: int, data: Path = DATA) -> list[dict[str, Any]]:
    """``n`` configurations drawn as random search draws them (log scales honoured)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c: dict[str, Any] = {}
        for p in space(data):
            if p.log:
                v: float = 2.718281828459045 ** rng.uniform(_ln(p.lower), _ln(p.upper))
            else:
                v = rng.uniform(p.lower, p.upper)
            c[p.name] = min(max(round(v), int(p.lower)), int(p.upper)) if p.integer else v
        out.append(c)
    return out


def _ln(x: float) -> float:
    import math

    return math.log(x)


def replay_lc(config: dict[str, Any], task: str, data: Path) -> None:
    """Ray trainable: report the surrogate's curve of ``config``, one epoch per result.

    Resumes from its checkpoint (HyperBandForBOHB pauses trials at its rungs); the others never
    pause, so only a paused trial writes one.
    """
    import tempfile

    from ray import tune

    acc, _ = curve(task, config, data)
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = int((Path(d) / "epoch").read_text())
    for i in range(start, len(acc)):
        metrics = {OBJECTIVE: acc[i] / 100, "val_accuracy": acc[i], "epoch": FIRST + i}
        if i + 1 in _PAUSES:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "epoch").write_text(str(i + 1))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)


_PAUSES: set[int] = set()  # iterations at which a trial may be paused (set by LCTable)


@dataclass
class LCTable(Table):
    """The surrogate on one task as a replay table; configurations are added as trials start."""

    task: str = "189906"
    data: Path = DATA
    pauses: tuple[int, ...] = ()  # HyperBandForBOHB's milestones (a checkpoint there)
    lo: float = 0.0
    hi: float = 100.0
    seconds: dict[int, list[float]] = field(default_factory=dict)

    @classmethod
    def for_task(cls, task: str, data: Path = DATA) -> LCTable:
        lo, hi = bounds(task, data)
        return cls(values={}, index={}, curves={}, failed=set(), max_t=LAST - FIRST + 1,
                   task=task, data=data, lo=lo, hi=hi)

    @property
    def best(self) -> float:
        return 1.0  # scores are normalised: regret = 1 - score

    def score(self, accuracy: float) -> float:
        """Normalised accuracy (1 - YAHPO's normalised regret)."""
        return (accuracy - self.lo) / (self.hi - self.lo)

    def config_id(self, params: dict[str, Any]) -> int:
        key = tuple(params[p] for p in PARAMS)
        if key not in self.index:
            cid = self.index[key] = len(self.index)
            acc, sec = curve(self.task, dict(zip(PARAMS, key)), self.data)
            self.curves[cid] = [{OBJECTIVE: a / 100, "val_accuracy": a, "wall_seconds": s}
                                for a, s in zip(acc, sec)]
            self.true[cid] = self.score(acc[-1])
        return self.index[key]

    def define(self, trial: Any) -> None:
        for p in space(self.data):
            if p.integer:
                trial.suggest_int(p.name, int(p.lower), int(p.upper), log=p.log)
            else:
                trial.suggest_float(p.name, p.lower, p.upper, log=p.log)

    def random_space(self) -> dict[str, Any]:
        from ray import tune

        out = {}
        for p in space(self.data):
            if p.integer:
                out[p.name] = (tune.lograndint if p.log else tune.randint)(
                    int(p.lower), int(p.upper) + 1)
            else:
                out[p.name] = (tune.loguniform if p.log else tune.uniform)(p.lower, p.upper)
        return out

    def trainable(self) -> Any:
        from ray import tune

        return tune.with_parameters(_with_pauses, task=self.task, data=self.data,
                                    pauses=self.pauses)


def _with_pauses(config: dict[str, Any], task: str, data: Path, pauses: tuple[int, ...]) -> None:
    _PAUSES.clear()
    _PAUSES.update(pauses)
    replay_lc(config, task, data)


def main(argv: list[str] | None = None) -> int:
    task = (argv if argv is not None else sys.argv[1:] or ["189906"])[0]
    why = missing()
    if why:
        raise SystemExit(why)
    acc, sec = curve(task, defaults())
    lo, hi = bounds(task)
    print(f"task {task}, defaults {defaults()}: val_accuracy at epochs 2, 11, 51 = "
          f"{acc[0]:.2f}, {acc[9]:.2f}, {acc[-1]:.2f} (normalised regret "
          f"{(hi - acc[-1]) / (hi - lo):.4f}); {sum(sec):.0f} s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
