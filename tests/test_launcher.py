"""The Ray cluster launcher for real: ``ray up`` → ``ray submit`` → results → ``ray down``.

Runs the README's on-prem commands with ``cluster-onprem.yaml`` (addresses, SSH user and
key, cluster name changed) against a head and a worker made on this machine by
``tests/launcher/hosts.py``: network namespaces on a private bridge, an sshd each, a user and a
key made for the test, one shared home folder. Then ``ray up`` with a worker whose venv
install fails must fail naming that worker. The hosts reach no package index, so the user's
pip installs from a wheelhouse of the versions this venv holds (``~/.config/pip/pip.conf``, as a
site with a local mirror would set it up); the install itself is real, into a fresh ``~/venv``.

Needs root (CI runs as root; ``.ci/run`` installs openssh-server, rsync and iproute2); skipped
with the reason otherwise. Takes about 7 minutes (2 cores).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from launcher.hosts import Hosts, ssh_hosts, unavailable

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SEARCH = ["--trials", "4", "--image-size", "32", "--batch-size", "8", "--backbones",
          "small_cnn", "--max-epochs", "2", "--grace-period", "1", "--no-final"]
NOT_RAY = ("ssh", "bash", "-bash")  # sshd sessions and ssh multiplexers, not Ray


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """Wheels of exactly the versions this venv holds (downloaded once, then cached)."""
    if reason := unavailable():
        pytest.skip(f"launcher test: {reason}")
    requires = [r for r in importlib.metadata.requires("cnmc-search") or []
                if "extra ==" not in r]
    pins = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                          capture_output=True, text=True, check=True).stdout
    wanted = [*requires, "setuptools>=68", f"pip=={importlib.metadata.version('pip')}"]
    key = hashlib.sha256((pins + "\n".join(wanted)).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("CNMC_CACHE") or Path.home() / ".cache" / "cnmc-search")
    wheels = cache / "launcher-wheels" / key
    if not (wheels / ".complete").is_file():
        part = wheels.with_name(f"{key}.partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        (part / "constraints.txt").write_text(pins)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(part),
                        "--only-binary=:all:", "-c", str(part / "constraints.txt"), *wanted],
                       check=True)
        (part / "constraints.txt").unlink()
        (part / ".complete").touch()
        shutil.rmtree(wheels, ignore_errors=True)
        part.rename(wheels)
    return wheels


class Launcher:
    """The ``ray`` CLI as a user runs it from their machine (cwd: the repository)."""

    def __init__(self, hosts: Hosts, config: Path, log: Path):
        self.config, self.log = str(config), log
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "PIP_", "VIRTUAL_ENV"))}
        self.env.update(HOME=str(hosts.local_home), PYTHONUNBUFFERED="1",
                        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, *args: str, ok: bool | None = True,
                 timeout: float = 900) -> str:
        """Run ``ray *args``; assert it succeeds (``ok``), fails (not ``ok``) or either (None)."""
        t0 = time.monotonic()
        r = subprocess.run([RAY, *args], cwd=REPO, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        self.seconds[name] = round(time.monotonic() - t0, 1)
        out = r.stdout + r.stderr
        with self.log.open("a") as f:
            f.write(f"\n$ ray {' '.join(args)}   # rc {r.returncode}, {self.seconds[name]} s\n"
                    f"{out}")
        assert ok is None or (r.returncode == 0) == ok, \
            f"ray {' '.join(args)} -> rc {r.returncode}:\n{out[-6000:]}"
        return out


def _ray_processes(hosts: Hosts) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in hosts.processes() if not cmd.startswith(NOT_RAY)]


def _share(path: Path, hosts: Hosts) -> None:
    subprocess.run(["chown", "-R", f"{hosts.user}:{hosts.user}", str(path)], check=True)


@pytest.fixture
def cluster_name() -> Iterator[str]:
    """A cluster name of this test's own; the launcher's state files for it go afterwards."""
    name = f"cnmc-onprem-test-{os.getpid()}"
    yield name
    for path in Path("/tmp/ray").glob(f"cluster-{name}*"):  # cluster-NAME[-bad].{state,lock}
        path.unlink(missing_ok=True)
    for path in Path("/tmp").glob("ray-config-*"):  # the launcher's cached configs of it
        with contextlib.suppress(OSError):
            if f'"cluster_name": "{name}' in path.read_text():
                path.unlink()


@pytest.mark.slow
def test_launcher_up_submit_rsync_down(wheelhouse, real_data, cluster_name, tmp_path):
    t_start = time.monotonic()
    # host 2 is a worker whose pip reaches no wheels: its venv install fails
    with ssh_hosts(3, sshd_extra={2: "SetEnv PIP_NO_INDEX=1 PIP_FIND_LINKS=/nonexistent"}
                   ) as hosts:
        head, worker, broken = hosts.ips
        # the hosts' pip: a fresh venv installed from the wheelhouse, never from an index
        wheels = hosts.base / "wheels"
        shutil.copytree(wheelhouse, wheels, copy_function=_link_or_copy)
        pip_conf = hosts.home / ".config" / "pip" / "pip.conf"
        pip_conf.parent.mkdir(parents=True)
        pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {wheels}\n")
        _share(hosts.home / ".config", hosts)
        shared = hosts.base / "shared"  # the "NFS" path every node sees
        shared.mkdir()
        _share(shared, hosts)
        data = real_data / "C-NMC_Leukemia"
        if subprocess.run(["runuser", "-u", hosts.user, "--", "test", "-r",
                           str(data / "validation_data")]).returncode != 0:
            shutil.copytree(data, shared / "C-NMC_Leukemia")  # the user cannot read it there
            data = shared / "C-NMC_Leukemia"
            _share(data, hosts)

        cfg = yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())
        cfg["cluster_name"] = cluster_name  # the launcher keys its state on it
        cfg["provider"].update(head_ip=head, worker_ips=[worker])
        # an absolute key path: ssh expands a "~" in it to root's home, not to $HOME
        cfg["auth"].update(ssh_user=hosts.user, ssh_private_key=str(hosts.key))
        config = hosts.local_home / "cluster-onprem.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        bad = dict(cfg, cluster_name=f"{cfg['cluster_name']}-bad",
                   provider=dict(cfg["provider"], worker_ips=[broken]))
        bad_config = hosts.local_home / "cluster-onprem-bad.yaml"
        bad_config.write_text(yaml.safe_dump(bad, sort_keys=False))
        ray = Launcher(hosts, config, tmp_path / "launcher.log")
        store, out = shared / "cnmc-32", shared / "runs" / "cnmc-001"
        fetched = tmp_path / "runs" / "cnmc-001"
        try:
            ray("token", "get-auth-token", "--generate")
            ray("up", "up", "-y", str(config))  # returns once the worker joined
            status = ray("status", "exec", str(config), "ray status")
            assert " 2 local.cluster.node" in status, status
            nodes = ray("nodes", "exec", str(config), "python -c 'import json, ray; ray.init(); "
                        "print(json.dumps({n[\"NodeID\"]: n[\"NodeManagerAddress\"] "
                        "for n in ray.nodes() if n[\"Alive\"]}))'")
            ip_of = json.loads(next(ln for ln in nodes.splitlines() if ln.startswith("{")))
            ray("ingest", "exec", str(config),
                f"leukemia ingest {data} --store {store} --size 32")
            submit = ray("submit", "submit", str(config), "search/run.py", "--",
                         "--address", "auto", "--store", str(store), "--out", str(out),
                         *SEARCH)
            fetched.parent.mkdir(parents=True)  # README: mkdir -p runs
            ray("rsync-down", "rsync-down", str(config), f"{out}/", f"{fetched}/")
            # a driver with the wrong token: one line with the cause and the fix
            wrong = ray("wrong-token", "exec", str(config),
                        f"RAY_AUTH_TOKEN=not-the-token python ~/cnmc-search/search/run.py "
                        f"--address auto --store {store} --out {shared}/runs/wrong", ok=False)
            wrong_line = "".join(ln for ln in wrong.splitlines() if ln.startswith("error:"))
            assert "rejected the token in $RAY_AUTH_TOKEN" in wrong_line, wrong[-3000:]
        finally:
            ray("down", "down", "-y", str(config), ok=None)  # always stop Ray
            left, gone_after = _wait_no_ray(hosts, 150)
        assert not left, f"Ray processes left {gone_after} s after ray down: {left}"

        # no cluster any more: the driver says so in one line
        r = hosts.ssh(head, f"python ~/cnmc-search/search/run.py --address auto "
                            f"--store {store} --out {shared}/runs/none")
        no_cluster = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(no_cluster) == 1, r.stdout + r.stderr
        assert "no Ray cluster" in no_cluster[0], no_cluster

        # a worker whose venv install fails: `ray up` fails naming it, and leaves no Ray running
        try:
            failed = ray("up-broken-worker", "up", "-y", str(bad_config), ok=False)
        finally:
            bad_left, _ = _wait_no_ray(hosts, 60)
        assert f"error: worker {broken} failed to set up" in failed, \
            failed[-5000:]
        assert "Could not find a version that satisfies" in failed  # pip's own words, shown
        assert not bad_left, bad_left

    summary = json.loads((fetched / "summary.json").read_text())
    with (fetched / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 4, trials
    per_host = {ip_of.get(node, node): info["trials"] for node, info in summary["nodes"].items()}
    assert set(per_host) == {head, worker} and all(n >= 1 for n in per_host.values()), per_host
    assert (fetched / "report.html").stat().st_size > 1000
    print(f"\nlauncher test: head {head}, worker {worker}; trials per node {per_host} "
          f"(node ids {ip_of}); fetched {fetched}/report.html; Ray gone {gone_after} s after "
          f"ray down returned; {wrong_line}; {no_cluster[0]}; steps (s) {ray.seconds}; "
          f"total {time.monotonic() - t_start:.0f} s\n{submit[-500:]}")


def _wait_no_ray(hosts: Hosts, timeout: float) -> tuple[list[tuple[int, str]], float]:
    """Wait until the test user runs no Ray process; return what is left and seconds waited."""
    t0 = time.monotonic()
    while (left := _ray_processes(hosts)) and time.monotonic() - t0 < timeout:
        time.sleep(1)
    return left, round(time.monotonic() - t0, 1)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------------------------------------
# search/connect.py without a cluster (fast)


@pytest.mark.parametrize(("name", "workers"), [("cluster-onprem.yaml", 2), ("cluster.yaml", 0)])
def test_expected_workers_counts_what_ray_up_starts(name, workers):
    from ray.autoscaler._private.util import prepare_config

    from search.connect import expected_workers

    cfg = prepare_config(yaml.safe_load((REPO / name).read_text()))
    assert expected_workers(cfg) == workers  # on-prem: its worker_ips; AWS: from 0


def test_check_cluster_without_cluster_says_how_to_start_one(monkeypatch, tmp_path):
    from search.connect import ClusterConnectionError, check_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no `ray start` recorded here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterConnectionError, match="no Ray cluster is running on this "
                       "machine; start one first"):
        check_cluster("auto")


def test_check_cluster_at_closed_port_names_the_address():
    import socket

    from search.connect import ClusterConnectionError, check_cluster

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterConnectionError, match=rf"no Ray cluster answers at \S+:{port} "
                       r"\(Connection refused\)"):
        check_cluster(f"127.0.0.1:{port}")


@pytest.mark.parametrize("cause", ["raylet exits", "head refuses"])
def test_reap_ends_the_session_once_it_lost_the_head(cause, tmp_path):
    """A fake session (a "raylet" and a "log monitor" naming its folder) beside another one."""
    import socket
    import threading

    from search.connect import reap

    session = tmp_path / "session_2026-01-01_00-00-00_000000_1"

    def fake(argv0: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", f'exec -a "{argv0}" sleep 600'])

    procs = [fake(f"{session}/sockets/raylet"),
             fake(f"python log_monitor.py --session-dir={session}"),
             fake("python log_monitor.py --session-dir=/tmp/ray/session_of_someone_else")]
    raylet, monitor, other = procs
    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen()
    address = f"127.0.0.1:{head.getsockname()[1]}"
    time.sleep(0.5)  # the execs have happened
    try:
        reaper = threading.Thread(target=reap, args=(str(session), address, 0.2))
        reaper.start()
        time.sleep(1)
        assert monitor.poll() is None  # a live head and raylet: nothing happens
        if cause == "raylet exits":  # as the raylet does 60 s after losing the head
            raylet.terminate()
            raylet.wait(timeout=10)
        else:  # `ray down` stopped the head
            head.close()
        reaper.join(timeout=15)
        assert not reaper.is_alive()
        assert monitor.wait(timeout=5) is not None and raylet.wait(timeout=5) is not None
        assert other.poll() is None  # another session is left alone
    finally:
        head.close()
        for p in procs:
            p.kill()
            p.wait()
