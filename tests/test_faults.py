"""The fault matrix: real runs of ``search/run.py`` killed, starved or doubled, then resumed.

Every run is a real process (its own process group) with a real local Ray and real Keras on the
real sample at 32 px; a "kill" is SIGKILL to the driver alone (``kill -9 PID``), then to what is
left of its group. Phases are hit with the driver's own hook (``CNMC_HOLD_AT=<phase>`` holds the
driver there, ``search/faults.py``) or by polling for the files a phase writes, never by sleeps.

One search (``chain``) is killed four times, once per phase, and resumed after each kill:
while ingesting, during the trials (that run started by an *older* copy of the code whose live
view is another class), during the final members and while the report is written; the last
``--resume`` finishes. The other rows run searches of their own.

    .venv/bin/python -m pytest -q tests/test_faults.py     # slow: each row is a whole search;
    # measured on 2 cores shared with other work (load 10-45): the chain 36 min, the worker
    # kill ~7, the full filesystem ~18, the upload ~17; the units ~1 min together
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from searchrun import REPO, env, finish, kill_driver, run, start, stop_group, wait_until
from searchrun import trials as read_trials

SMALL = ["--image-size", "32", "--batch-size", "8", "--backbones", "small_cnn",
         "--reduction-factor", "2", "--grace-period", "1", "--num-cpus", "2"]
MEMBERS = ("fold0-seed0", "fold1-seed0", "fold2-seed0")  # the sample store has 3 folds
OURS = re.compile(r"^((search|leukemia)(\.\w+)+|__main__)$")  # modules of this project


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="cnmc-search", storage=f"sqlite:///{out / 'study.db'}")


def _results(out: Path) -> dict[str, list[dict]]:
    """Each trial folder's ``result.json`` lines (one per reported epoch)."""
    return {d.name: [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
            for d in sorted((out / "tune").glob("trial_*")) if (d / "result.json").exists()}


def _finished(out: Path) -> dict[str, int]:
    return {k: len(v) for k, v in _results(out).items() if v and v[-1].get("done")}


def _running(out: Path) -> int:
    return sum(1 for v in _results(out).values() if v and not v[-1].get("done"))


def _assert_same_study(out: Path, n: int) -> None:
    """The study holds one finished Optuna trial per Ray trial, none left running; a trial
    asked just before a kill that Tune never ran is FAIL, marked ``not_run``, without values."""
    study = _study(out)
    rows = read_trials(out)
    ran = [t for t in study.trials if "not_run" not in t.user_attrs]
    assert len(ran) == n == len(rows), (len(study.trials), len(rows))
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]
    assert sorted(t.user_attrs.get("ray_trial_id") for t in ran) == \
        sorted(r["trial_id"] for r in rows)
    for t in study.trials:
        if "not_run" in t.user_attrs:
            assert t.state == optuna.trial.TrialState.FAIL and not t.intermediate_values


def _assert_complete_export(out: Path) -> None:
    for name in ("model.keras", "metrics.json", "config.json"):
        assert (out / "best" / name).stat().st_size > 0, name
    assert json.loads((out / "best" / "metrics.json").read_text())["n"] == 40
    assert (out / "report.html").read_text().rstrip().endswith("</html>")
    assert not list(out.rglob(".*.tmp")), list(out.rglob(".*.tmp"))  # no half-written file


def _module_refs(data: bytes) -> set[str]:
    """Modules of ours a pickle names, without unpickling it: GLOBAL / STACK_GLOBAL operands
    and the ``__module__`` strings of classes and functions pickled by value."""
    refs, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str):
            strings.append(arg)
            if OURS.match(arg):
                refs.add(arg)
        if op.name == "GLOBAL":
            refs.add(arg.split(" ")[0])
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            refs.add(strings[-2])
    return {r for r in refs if OURS.match(r)}


def _blobs(value) -> list[bytes]:
    """The cloudpickle blobs in a Tune JSON state (TuneFunctionEncoder), nested JSON too."""
    if isinstance(value, dict):
        if value.get("_type") == "CLOUDPICKLE_FALLBACK":
            return [bytes.fromhex(value["value"])]
        return [b for v in value.values() for b in _blobs(v)]
    if isinstance(value, list):
        return [b for v in value for b in _blobs(v)]
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return _blobs(json.loads(value))
        except ValueError:
            return []
    return []


def _pickled_refs(tune_dir: Path) -> dict[str, set[str]]:
    """Per file of Tune's saved state: the modules of ours it would import on a restore."""
    found: dict[str, set[str]] = {}
    for f in sorted(tune_dir.iterdir()):
        if not f.is_file() or not f.name.startswith(("tuner", "experiment_state", "search")):
            continue
        data = f.read_bytes()  # search_gen_state-*.json is a pickle despite its name
        blobs = _blobs(json.loads(data)) if data[:1] == b"{" else [data]
        refs = {m for b in blobs for m in _module_refs(b)}
        if refs:
            found[f.name] = refs
    return found


def _old_code(tmp: Path) -> Path:
    """A copy of ``search/`` whose live view is another class: the code before an upgrade."""
    old = tmp / "old-code"
    shutil.copytree(REPO / "search", old / "search",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with (old / "search" / "searcher.py").open("a") as fh:
        fh.write("\n\nclass LiveViewOfAnOlderRelease(LiveView):\n"
                 "    \"\"\"The display class of an older release (gone from new code).\"\"\"\n"
                 "\n\nLiveView = LiveViewOfAnOlderRelease  # noqa: F811\n")
    return old


# ---------------------------------------------------------------------------------------------
# Units: the lock, the hook, the pieces built from the command


def _unlock():
    from search.faults import unlock_out

    unlock_out()


def test_lock_out_refuses_a_second_holder_naming_the_first(tmp_path):
    from search.faults import RunLockedError, lock_out

    lock_out(tmp_path, "first command")
    try:
        # another open file description: the kernel refuses it as it would another process
        with pytest.raises(RunLockedError, match=re.escape(
                f"is in use by another search (pid {os.getpid()} on {socket.gethostname()}")):
            lock_out(tmp_path, "second command")
    finally:
        _unlock()
    assert (tmp_path / "search.lock").read_text() == ""  # released


def test_lock_out_takes_over_a_dead_search_on_this_host(tmp_path, capsys):
    from search.faults import lock_out

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "search.lock").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started_at": "then", "command": "c"}))
    try:
        lock_out(tmp_path, "new")
        assert json.loads((tmp_path / "search.lock").read_text())["pid"] == os.getpid()
    finally:
        _unlock()
    assert f"no longer running (pid {dead.pid} on {socket.gethostname()}" in \
        capsys.readouterr().err


def test_lock_out_refuses_a_lock_from_another_host_saying_what_to_do(tmp_path):
    from search.faults import RunLockedError, lock_out

    (tmp_path / "search.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere.*delete that file and rerun"):
        lock_out(tmp_path, "new")


def test_hold_waits_only_at_its_phase_until_the_marker_goes(tmp_path, monkeypatch):
    import threading

    from search.faults import hold

    monkeypatch.setenv("CNMC_HOLD_AT", "report")
    hold("final", tmp_path)  # another phase: returns at once
    assert not (tmp_path / ".hold-final").exists()
    t = threading.Thread(target=hold, args=("report", tmp_path))
    t.start()
    wait = time.monotonic() + 10
    while not (tmp_path / ".hold-report").exists() and time.monotonic() < wait:
        time.sleep(0.01)
    assert t.is_alive()
    (tmp_path / ".hold-report").unlink()
    t.join(timeout=10)
    assert not t.is_alive()


def test_constant_aware_asha_stops_what_the_rule_says_and_asks_asha_otherwise():
    from types import SimpleNamespace

    from search.faults import ConstantAwareASHA
    from search.searcher import ConstantStopper

    asha = ConstantAwareASHA(ConstantStopper(2, flag="constant"), metric="m", mode="max",
                             max_t=4, grace_period=2)
    trial = SimpleNamespace(trial_id="t1", config={}, evaluated_params={})
    asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, trial, {"training_iteration": 2, "constant": 1,
                                              "m": 0.5}) == asha.STOP
    assert asha.on_trial_result(None, trial, {"training_iteration": 1, "constant": 1,
                                              "m": 0.5}) == asha.CONTINUE


def test_the_trial_folder_rule_pickles_as_plain_data():
    import pickle

    from search.faults import TRIAL_DIRNAME

    data = pickle.dumps(TRIAL_DIRNAME)
    assert _module_refs(data) == set()
    from types import SimpleNamespace

    assert pickle.loads(data)(SimpleNamespace(trial_id="ab12")) == "trial_ab12"


def test_settle_study_fails_trials_tune_never_ran(tmp_path):
    from search.results import Trial
    from search.run import settle_study

    study = optuna.create_study(study_name="cnmc-search",
                                storage=f"sqlite:///{tmp_path / 'study.db'}")
    for rid in ("ran", "lost"):
        study.ask().set_user_attr("ray_trial_id", rid)
    settle_study(tmp_path, [Trial(trial_id="ran", number=0, status="completed")])
    states = {t.user_attrs["ray_trial_id"]: (t.state, "not_run" in t.user_attrs)
              for t in _study(tmp_path).trials}
    assert states == {"ran": (optuna.trial.TrialState.RUNNING, False),  # its searcher tells it
                      "lost": (optuna.trial.TrialState.FAIL, True)}


# ---------------------------------------------------------------------------------------------
# One search killed in every driver phase, resumed after each


@pytest.fixture(scope="module")
def chain(tmp_path_factory, real_data) -> dict:
    tmp = tmp_path_factory.mktemp("chain")
    out = tmp / "run"
    args = ["--data", str(real_data), "--trials", "4", "--max-epochs", "2", "--out", str(out),
            "--decision-rule", "oof", *SMALL]
    seen: dict = {"out": out, "tmp": tmp}

    # 1. kill -9 while the store is being ingested (right after the driver says so)
    proc = start(args, tmp, tmp / "1-ingest.log")
    try:
        wait_until(proc, lambda: "ingesting" in proc.log.read_text(), "ingest", every=0.02)
    finally:
        kill_driver(proc)
    seen["stores_at_ingest_kill"] = [p.parent.name for p in (tmp / "cache").rglob(
        "manifest.json")]
    seen["tune_at_ingest_kill"] = (out / "tune").exists()

    # 2. --resume with an older copy of the code; kill -9 once a trial has finished while
    # another is running: that one is held in its worker after its first epoch
    # (CNMC_HOLD_AT=trial), and Tune has saved its experiment since (the hold began after the
    # driver had recorded that epoch's checkpoint)
    held = out / ".hold-trial"

    def one_finished_one_held() -> bool:
        saved = [p.stat().st_mtime_ns for p in (out / "tune").glob("experiment_state-*.json")]
        return (held.exists() and bool(_finished(out))
                and max(saved, default=0) > held.stat().st_mtime_ns)

    proc = start([*args, "--resume"], tmp, tmp / "2-trials.log", repo=_old_code(tmp),
                 extra_env={"CNMC_HOLD_AT": "trial"})
    try:
        wait_until(proc, one_finished_one_held, "trials", every=0.2)
        seen["finished_at_trials_kill"] = _finished(out)
        seen["running_at_trials_kill"] = _running(out)
    finally:
        kill_driver(proc)
    held.unlink(missing_ok=True)
    seen["log2"] = proc.log.read_text()
    seen["refs_after_old_code"] = _pickled_refs(out / "tune")

    # 3. --resume with this code; kill -9 once one final member is written
    members = out / "best" / "members"
    proc = start([*args, "--resume"], tmp, tmp / "3-final.log")
    try:
        wait_until(proc, lambda: bool(list(members.glob("fold*.json"))), "a final member",
                   every=0.2)
    finally:
        kill_driver(proc)
    seen["log3"] = proc.log.read_text()
    finished = sorted(p.stem for p in members.glob("fold*.json"))
    seen["members_at_final_kill"] = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for n in finished for p in (members / f"{n}.json", members / f"{n}.keras")}
    seen["trials_csv_at_final_kill"] = read_trials(out)

    # 4. --resume held where the report is written (summary.json written, report.html next)
    proc = start([*args, "--resume"], tmp, tmp / "4-report.log",
                 extra_env={"CNMC_HOLD_AT": "report"})
    try:
        wait_until(proc, (out / ".hold-report").exists, "the report phase", every=0.2)
        seen["report_at_report_kill"] = (out / "report.html").exists()
        seen["summary_at_report_kill"] = json.loads((out / "summary.json").read_text())
    finally:
        kill_driver(proc)
    (out / ".hold-report").unlink(missing_ok=True)

    # 5. --resume to the end
    t0 = time.monotonic()
    seen["log5"] = run([*args, "--resume"], tmp)
    seen["last_resume_seconds"] = time.monotonic() - t0
    seen["refs_at_end"] = _pickled_refs(out / "tune")
    return seen


@pytest.mark.slow
def test_fault_driver_killed_while_ingesting_resume_starts_the_search(chain):
    assert chain["stores_at_ingest_kill"] == []  # killed before the store was complete
    assert not chain["tune_at_ingest_kill"]
    assert "stopped before its first trial; starting it now" in chain["log2"]
    assert len(read_trials(chain["out"])) == 4


@pytest.mark.slow
def test_fault_driver_killed_during_trials_none_lost_none_run_twice(chain):
    out = chain["out"]
    before = chain["finished_at_trials_kill"]
    assert before and chain["running_at_trials_kill"] >= 1
    results = _results(out)
    assert len(results) == 4 == len(read_trials(out))
    for name, lines in before.items():  # finished before the kill: not trained again
        assert len(results[name]) == lines, name
    rows = read_trials(out)
    assert all(r["status"] in ("completed", "pruned", "constant") for r in rows), rows
    # the trial running at the kill had reported an epoch: it went on from that checkpoint
    assert any(int(r["resumed_from_epoch"] or 0) >= 1 for r in rows), rows
    _assert_same_study(out, 4)


@pytest.mark.slow
def test_fault_resume_after_the_display_class_changed(chain):
    # the kill in the trials came from a copy whose live view was another class; the resumes
    # ran this code: Tune's state named nothing of ours, so nothing stale was unpickled
    assert "Traceback" not in chain["log3"], chain["log3"][-3000:]
    assert "trials 4:" in chain["log5"]  # this code's live view drew the resumed search
    for refs in (chain["refs_after_old_code"], chain["refs_at_end"]):
        assert {f: r for f, r in refs.items() if not f.startswith("searcher-state")} == {}, refs


@pytest.mark.slow
def test_fault_searcher_state_names_nothing_of_ours(chain):
    assert not any(f.startswith("searcher-state") for f in chain["refs_at_end"]), \
        chain["refs_at_end"]


@pytest.mark.slow
def test_fault_driver_killed_during_final_keeps_finished_members(chain):
    members = chain["out"] / "best" / "members"
    kept = chain["members_at_final_kill"]
    assert kept, "no member had finished at the kill"
    for name, (mtime, data) in kept.items():
        assert (members / name).stat().st_mtime_ns == mtime, name
        assert (members / name).read_bytes() == data, name
    assert sorted(p.stem for p in members.glob("fold*.json")) == list(MEMBERS)
    assert read_trials(chain["out"]) == chain["trials_csv_at_final_kill"]


@pytest.mark.slow
def test_fault_driver_killed_while_writing_the_report(chain):
    out = chain["out"]
    assert chain["report_at_report_kill"] is False
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial_counts"] == chain["summary_at_report_kill"]["trial_counts"]
    assert summary["best_trial"] == chain["summary_at_report_kill"]["best_trial"]
    _assert_complete_export(out)
    _assert_same_study(out, 4)
    assert not (out / "search.lock").read_text().strip()  # released at the clean exit


# ---------------------------------------------------------------------------------------------
# A worker killed mid-trial


@pytest.mark.slow
def test_fault_worker_killed_mid_trial_is_retried_from_its_checkpoint(tmp_path, real_data):
    out = tmp_path / "run"
    args = ["--data", str(real_data), "--trials", "2", "--max-epochs", "3", "--out", str(out),
            "--no-final", "--max-failures", "1",
            *[a if a != "1" else "3" for a in SMALL]]  # grace 3: no trial is stopped
    proc = start(args, tmp_path)
    try:
        victim: dict = {}

        def one_epoch_in() -> bool:
            for name, lines in _results(out).items():
                if len(lines) == 1 and not lines[-1].get("done"):
                    victim.update(name=name, pid=int(lines[-1]["pid"]))
                    return True
            return False

        wait_until(proc, one_epoch_in, "a trial's first epoch", every=0.2)
        os.kill(victim["pid"], signal.SIGKILL)  # the Ray worker running that trial
        finish(proc)
    finally:
        stop_group(proc)
    rows = {f"trial_{r['trial_id']}": r for r in read_trials(out)}
    hit = rows[victim["name"]]
    assert hit["status"] == "completed" and not hit["error"], hit
    assert int(hit["resumed_from_epoch"]) >= 1, hit  # retried from its checkpoint, not epoch 0
    assert all(r["status"] == "completed" for r in rows.values()), rows
    assert [t.state for t in _study(out).trials] == [optuna.trial.TrialState.COMPLETE] * 2


# ---------------------------------------------------------------------------------------------
# Two searches on one --out


@pytest.mark.slow
def test_fault_second_search_on_the_same_out_refuses_naming_the_first(tmp_path, real_data):
    out = tmp_path / "run"
    args = ["--data", str(real_data), "--trials", "1", "--max-epochs", "1", "--out", str(out),
            *SMALL]
    first = start(args, tmp_path, tmp_path / "first.log", extra_env={"CNMC_HOLD_AT": "store"})
    try:
        wait_until(first, (out / ".hold-store").exists, "the first search to start", every=0.1)
        for extra in ([], ["--resume"]):
            second = subprocess.run(
                [sys.executable, str(REPO / "search" / "run.py"), *args, *extra], cwd=REPO,
                env=env(tmp_path), capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr, second.stderr
            assert "is in use by another search" in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        kill_driver(first)
    (out / ".hold-store").unlink()
    # the first was killed: its lock is stale, and a new search on this host takes it over
    third = start([*args, "--resume"], tmp_path, tmp_path / "third.log",
                  extra_env={"CNMC_HOLD_AT": "store"})
    try:
        wait_until(third, (out / ".hold-store").exists, "the third search to start", every=0.1)
        text = third.log.read_text()
        assert f"taking over the lock of an earlier search that is no longer running (pid " \
            f"{first.pid} on {socket.gethostname()}" in text, text
        assert json.loads((out / "search.lock").read_text())["pid"] == third.pid
    finally:
        kill_driver(third)


# ---------------------------------------------------------------------------------------------
# --out on a full filesystem


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A 64 MiB tmpfs at ``tmp_path/fs`` (root only), unmounted after the test."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for --out needs root (mount -t tmpfs)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    """Write one file until the filesystem is full; return it."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):  # MiB, then pages, then bytes: full to the last byte
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_fault_out_filesystem_full_is_a_clear_error_and_resumable(tmp_path, real_data, small_fs):
    out = small_fs / "run"
    args = ["--data", str(real_data), "--trials", "2", "--max-epochs", "1", "--out", str(out),
            *SMALL]
    proc = start(args, tmp_path, extra_env={"CNMC_HOLD_AT": "final"})
    try:
        wait_until(proc, (out / ".hold-final").exists, "the final step", every=0.2)
        trials_csv = (out / "trials.csv").read_bytes()
        filler = _fill(small_fs)
        (out / ".hold-final").unlink()
        proc.wait(timeout=300)
    finally:
        stop_group(proc)
    text = proc.log.read_text()
    assert proc.returncode == 1, text[-3000:]
    assert f"error: no space left on the filesystem holding {out}" in text, text[-3000:]
    assert "rerun the same command with --resume" in text
    # nothing already written is corrupt: whole files, no temporary leftovers
    assert (out / "trials.csv").read_bytes() == trials_csv
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not list(out.rglob(".*.tmp")), list(out.rglob(".*.tmp"))
    members = out / "best" / "members"
    for j in members.glob("fold*.json"):  # a member is there whole or not at all
        json.loads(j.read_text())
        assert j.with_suffix(".keras").stat().st_size > 0
    filler.unlink()
    run([*args, "--resume"], tmp_path)
    _assert_complete_export(out)
    _assert_same_study(out, 2)


# ---------------------------------------------------------------------------------------------
# Killed while uploading the results to S3


@pytest.mark.slow
def test_fault_driver_killed_while_uploading_to_s3(tmp_path, real_data):
    from leukemia.store import ingest

    real_store = tmp_path / "store"
    ingest(real_data, str(real_store), size=32, progress=False)
    s3mod = pytest.importorskip("test_s3")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3mod.CREDENTIALS.items():
            mp.setenv(k, v)
        server = s3mod.moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0,
                                                      verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            s3 = s3mod.S3(f"{host}:{port}")
            import pyarrow.fs as pafs

            fs, _ = pafs.FileSystem.from_uri(s3.uri("") + "&allow_bucket_creation=true")
            fs.create_dir(s3mod.BUCKET)
            _killed_upload_resumes(tmp_path, s3, s3mod.upload(real_store, s3.uri("store")))
        finally:
            server.stop()


def _killed_upload_resumes(tmp_path: Path, s3, store: str) -> None:
    key = "run"
    args = ["--store", store, "--trials", "2", "--max-epochs", "1", "--final", "all-folds",
            "--out", s3.uri(key), *SMALL]
    proc = start(args, tmp_path, tmp_path / "upload.log", extra_env={"CNMC_HOLD_AT": "upload"})
    local = tmp_path / "cache" / "runs" / f"cnmc_{key}"  # run.py's local copy of s3://cnmc/run
    try:
        wait_until(proc, (local / ".hold-upload").exists, "the upload", every=0.2)
        half = s3.keys(f"{key}/")
    finally:
        kill_driver(proc)
    (local / ".hold-upload").unlink(missing_ok=True)
    assert f"{key}/best/model.keras" in half and f"{key}/report.html" not in half, half
    trials_before = {k for k in half if k.endswith("/result.json")}
    run([*args, "--resume"], tmp_path)
    keys = s3.keys(f"{key}/")
    for name in ("trials.csv", "study.db", "summary.json", "report.html", "best/model.keras",
                 "best/metrics.json", "command.txt"):
        assert f"{key}/{name}" in keys, (name, keys)
    assert {k for k in keys if k.endswith("/result.json")} == trials_before  # none run again
    assert len(trials_before) == 2
    assert f"{key}/search.lock" not in keys
