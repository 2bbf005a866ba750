"""The cluster: launcher configs validated offline, and a real multi-node Ray on this machine.

The multi-node tests start a Ray cluster of their own with ``ray.cluster_utils.Cluster`` (a head
and a worker node, each a full raylet), run ``search/run.py --address`` against it in a
subprocess, and shut down only what they started.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml
from searchrun import REPO, finish, start
from searchrun import trials as read_trials

CONFIGS = ["cluster.yaml", "cluster-onprem.yaml"]
SMALL = ["--image-size", "32", "--batch-size", "8", "--backbones", "small_cnn",
         "--reduction-factor", "2", "--grace-period", "1", "--no-final"]
NODE_MEMORY = {"object_store_memory": 150 * 1024**2}


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_validates_against_ray_schema(name):
    cfg = yaml.safe_load((REPO / name).read_text())
    _validate(cfg)
    assert cfg["cluster_name"]
    starts = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts  # the dashboard is not exposed
    assert "cnmc-search" in " ".join(cfg["setup_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_sets_up_venv_path_and_token_on_every_node(name):
    # the launcher runs ray submit/exec/down in a login shell: ~/.bashrc must give them the venv
    # and token mode; the token itself comes from the machine running `ray up`
    cfg = yaml.safe_load((REPO / name).read_text())
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(cfg["setup_commands"])
    assert 'export PATH="$HOME/venv/bin:$PATH" RAY_AUTH_MODE=token' in setup
    assert setup.count("set -e;") == 1 and "flock" in setup  # a failed install fails the node
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "~/venv/bin/ray" not in cmd  # `ray` from the login PATH, as `ray down` runs it


def test_cluster_config_gpu_workers_autoscale_from_zero():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    worker = cfg["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert "ray-ml" not in yaml.safe_dump(cfg)  # retired images


def test_cluster_config_rejects_unknown_key():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg["max_wrokers"] = 3
    with pytest.raises(Exception, match="max_wrokers|Additional properties"):
        _validate(cfg)


def test_cluster_config_rejects_fractional_gpu_resources():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_worker"]["resources"] = {"GPU": 0.5}
    with pytest.raises(Exception, match="0.5|integer|not of type"):
        _validate(cfg)


# ---------------------------------------------------------------------------------------------
# A real multi-node cluster on one machine


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False, **NODE_MEMORY})
    worker = cluster.add_node(num_cpus=1, **NODE_MEMORY)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_search_spreads_trials_over_nodes(two_node_cluster, tmp_path, real_store):
    cluster, worker = two_node_cluster
    out = tmp_path / "run"
    proc = start(["--address", cluster.address, "--store", real_store, "--trials", "4",
                        "--max-epochs", "2", "--out", str(out), *SMALL], tmp_path)
    finish(proc)
    trials = read_trials(out)
    assert len(trials) == 4
    nodes = {t["node_id"] for t in trials}
    assert len(nodes) == 2, nodes  # trials ran on the head and on the worker
    assert worker.node_id in nodes
    summary = json.loads((out / "summary.json").read_text())
    # one store read per worker process, not per trial
    for node in summary["nodes"].values():
        assert node["store_reads"] == node["worker_processes"] <= node["trials"]


def _running_on(out: Path, node_id: str) -> bool:
    for d in (out / "tune").glob("trial_*"):
        f = d / "result.json"
        if not f.exists():
            continue
        lines = f.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        if last.get("node_id") == node_id and not last.get("done") \
                and 1 <= last.get("training_iteration", 0) <= 5:
            return True
    return False


@pytest.mark.slow
def test_search_survives_a_killed_worker_node(two_node_cluster, tmp_path, real_store):
    cluster, worker = two_node_cluster
    out = tmp_path / "run"
    # no early stopping (grace period = budget): every trial runs long enough to be caught
    args = [a if a != "1" else "8" for a in SMALL]  # --grace-period 8
    proc = start(["--address", cluster.address, "--store", real_store, "--trials", "4",
                        "--max-epochs", "8", "--max-failures", "2", "--out", str(out), *args],
                       tmp_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if _running_on(out, worker.node_id):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.log.read_text()[-3000:]
    cluster.remove_node(worker, allow_graceful=False)  # the node dies mid-trial
    finish(proc)
    trials = read_trials(out)
    assert len(trials) == 4  # every trial accounted for
    for t in trials:
        assert t["status"] in ("completed", "pruned", "failed", "constant"), t
        if t["status"] == "failed":
            assert t["error"], t
    moved = [t for t in trials if worker.node_id in json.loads(t["nodes"] or "[]")
             and json.loads(t["nodes"])[-1] != worker.node_id]
    assert moved, [(t["nodes"], t["status"]) for t in trials]
    # a trial that lost its node continued from its checkpoint on the surviving node
    assert any(int(t["resumed_from_epoch"] or 0) >= 1 for t in moved), moved
