"""What keeps a killed, crashed or doubled search safe to ``--resume``.

* :func:`lock_out`: one search per ``--out``. The lock is ``--out/search.lock`` (``flock`` plus
  the holder's pid, host and command); a second search on the same folder refuses, naming the
  first. The kernel drops an ``flock`` when its process dies, even by SIGKILL, so a lock left by a
  dead search on this host is taken over; one left by another host is reported with what to do.
* :func:`build_tuner`: the Tuner, created or restored so that nothing of ours is pickled into
  Tune's experiment state (``tuner.pkl``, ``experiment_state-*.json``, ``search_gen_state-*``).
  Tune pickles the whole ``TuneConfig``/``RunConfig`` into ``tuner.pkl`` when a Tuner is created,
  a ``Stopper`` into every experiment snapshot, and ``trial_dirname_creator`` into the search
  generator's state; a restore unpickles them, so a class of ours renamed or changed by an
  upgrade between the kill and the resume breaks the restore, or revives the old object. Here
  the Tuner is created (and restored) with Ray's objects and plain values only; the searcher,
  the scheduler (which also stops constant trials, instead of a pickled ``Stopper``) and the
  callbacks are built from the command on every run and attached before ``fit``. The searcher's
  *state* (its Optuna trials, from ``searcher-state-*.pkl``) is still restored into the new
  searcher.
* :func:`hold`: ``CNMC_HOLD_AT=<phase>`` stops the driver at a phase (``store``, ``final``,
  ``report``, ``upload``) until the marker ``--out/.hold-<phase>`` it writes is deleted: the
  fault tests kill or starve a run there without guessing with sleeps. ``CNMC_HOLD_AT=trial``
  holds a trial instead (:func:`hold_trial`): the first one Tune lets go on past its first
  epoch waits in its worker while the others run.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

LOCK = "search.lock"
HOLD_ENV = "CNMC_HOLD_AT"
HOLD_DIR_ENV = "CNMC_HOLD_DIR"  # where a trial's hold marker goes: --out, set by the driver
_held: list[int] = []  # the lock's file descriptor, open for the life of the process
_holds_done: set[str] = set()  # each phase holds once per process


class RunLockedError(RuntimeError):
    """Another search is using this ``--out``; the message names it and what to do."""


class ResumeError(RuntimeError):
    """A search cannot be resumed as it is; the message says what to do."""


def lock_out(out: Path, command: str) -> None:
    """Take ``out``'s search lock for this process, or raise :class:`RunLockedError`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    holder = _read_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"{out} is in use by another search ({_who(holder)}); two searches on one --out "
            "would overwrite each other's trials. Wait for it to finish, stop it "
            f"(kill {holder.get('pid', '<pid>')} on {holder.get('host', 'its host')}) and "
            "rerun with --resume, or choose another --out") from None
    host = socket.gethostname()
    if holder.get("pid"):
        if holder.get("host") != host:
            os.close(fd)
            raise RunLockedError(
                f"{path} names a search on another machine ({_who(holder)}); this machine "
                "cannot tell whether it still runs. If it does not, delete that file and rerun")
        print(f"taking over the lock of an earlier search that is no longer running "
              f"({_who(holder)})", file=sys.stderr)
    record = {"pid": os.getpid(), "host": host, "started_at": time.strftime(
        "%Y-%m-%d %H:%M:%S %Z"), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)
    _held.append(fd)


def unlock_out() -> None:
    """Release the lock at a clean exit (a killed search leaves it, to be taken over)."""
    while _held:
        fd = _held.pop()
        os.ftruncate(fd, 0)
        os.close(fd)


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _who(holder: dict[str, Any]) -> str:
    if not holder:
        return "its pid and host unknown"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started_at')}: {holder.get('command', '')}".rstrip(": "))


def hold(phase: str, out: Path) -> None:
    """Wait at ``phase`` while ``CNMC_HOLD_AT`` names it, until ``out/.hold-<phase>`` is gone."""
    if os.environ.get(HOLD_ENV) != phase or phase in _holds_done:
        return
    _holds_done.add(phase)
    marker = out / f".hold-{phase}"
    marker.write_text(f"{os.getpid()}\n")
    _wait(phase, marker)


def hold_trial(epoch: int) -> None:
    """In a trial, after its report of ``epoch`` returned: with ``CNMC_HOLD_AT=trial``, the
    first trial to get here after epoch 1 waits until ``$CNMC_HOLD_DIR/.hold-trial`` is gone.

    A function trainable's report returns only once the driver has taken the result (its
    checkpoint recorded) and the scheduler let the trial go on, so the held trial is one that
    runs and has a checkpoint of epoch 1; the other trials go on around it. Local Ray workers
    inherit the driver's environment, where ``search/run.py`` sets ``CNMC_HOLD_DIR``."""
    folder = os.environ.get(HOLD_DIR_ENV)
    if os.environ.get(HOLD_ENV) != "trial" or epoch != 1 or not folder:
        return
    marker = Path(folder) / ".hold-trial"
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # another trial holds (or held): this one goes on
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    _wait("trial", marker)


def _wait(phase: str, marker: Path) -> None:
    """Block until ``marker`` is deleted (by the test or the user that set the hold)."""
    print(f"{HOLD_ENV}={phase}: holding until {marker} is deleted", file=sys.stderr, flush=True)
    while marker.exists():
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# The Tuner: Ray's objects and plain values pickled, ours attached at every run


class ConstantAwareASHA(ASHAScheduler):
    """ASHA that first stops a trial ``stopper(trial_id, result)`` says to stop.

    Tune never saves a scheduler in its experiment state (the one it restores with is the one
    given to ``fit``), while it pickles a ``Stopper`` into every snapshot: a stop rule kept here
    is rebuilt from the command on every run. A stopped result reaches neither ASHA's rung nor
    the searcher's ``on_trial_result``, exactly as a ``Stopper``'s.

    Args:
        stopper: ``(trial_id, result) -> bool``, e.g. ``search.searcher.ConstantStopper``.
        **kwargs: as ``ASHAScheduler``.
    """

    def __init__(self, stopper: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stop_rule = stopper

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self._stop_rule(trial.trial_id, result):
            return self.STOP
        return super().on_trial_result(tune_controller, trial, result)


# a bound method of a str: pickled as (getattr, ("trial_{0.trial_id}", "format")), no code
TRIAL_DIRNAME = "trial_{0.trial_id}".format


def build_tuner(trainable: Any, *, exp_uri: str, resume: bool, tune_config: Any,
                run_config: Any, searcher: Any, scheduler: Any, callbacks: list) -> Any:
    """A Tuner whose pickled state holds only Ray's objects, with ours attached for ``fit``.

    Args:
        trainable: the trainable (re-specified on restore, as Tune requires).
        exp_uri: the experiment folder (``--out/tune``), for a restore.
        resume: restore the experiment at ``exp_uri`` (errored trials resumed) instead.
        tune_config, run_config: Tune's configs without a searcher, scheduler, callbacks or
            stopper: what ``tuner.pkl`` keeps.
        searcher, scheduler, callbacks: built from the command; attached, never pickled.
    """
    import dataclasses

    from ray import tune

    for name, value in (("search_alg", tune_config.search_alg),
                        ("scheduler", tune_config.scheduler), ("callbacks", run_config.callbacks),
                        ("stop", run_config.stop)):
        assert not value, f"{name} would be pickled into tuner.pkl"
    if resume:
        try:
            tuner = tune.Tuner.restore(exp_uri, trainable=trainable, resume_errored=True)
        except (AttributeError, ImportError, TypeError, EOFError) as e:
            raise ResumeError(
                f"cannot restore the search in {exp_uri}: its Tune state was written by a "
                f"version of this code whose objects are gone ({type(e).__name__}: {e}). "
                "Resume it with the version that started it, or start a new search with "
                "another --out") from e
    else:
        tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:  # Ray Client: the Tuner lives in a remote actor
        raise ResumeError("search/run.py cannot drive Tune through Ray Client (ray://); run "
                           "it on the cluster's head node (ray submit, or --address auto)")
    # Ray 2.60 keeps these in TunerInternal._tune_config / ._run_config and reads them in fit
    internal._tune_config = dataclasses.replace(
        tune_config, search_alg=searcher, scheduler=scheduler)
    restored = internal._run_config
    internal._run_config = dataclasses.replace(
        run_config, callbacks=callbacks, name=restored.name,
        storage_path=restored.storage_path, storage_filesystem=restored.storage_filesystem)
    return tuner
