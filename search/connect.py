"""Join and leave Ray clusters: connect a driver, wait for a launcher's workers, start a worker.

    python -m search.connect --wait-for-workers        # on a `ray up` head: wait for workers
    python -m search.connect --start-worker HEAD:6379  # on a worker: `ray start`, and a reaper

:func:`connect` is how ``search/run.py`` starts Ray. Ray's token auth needs ``RAY_AUTH_MODE=token``
and the cluster's token in ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``;
the launcher configs set both up on every node. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN_FILE = "~/.ray/auth_token"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the launcher writes it on the head
MONITOR_LOG = "/tmp/ray/session_latest/logs/monitor.out"  # the head's worker setup output
AUTOSCALER_LOG = "/tmp/ray/session_latest/logs/monitor.log"  # its decisions
# a local ray.init gives its raylet a fixed 30 s to register, which a loaded machine can pass
LOCAL_START_TRIES = 3
# The autoscaler's line for a node whose setup failed; its status lists such a node only until
# it relaunches it, which for `provider: local` is at once, so `failed_nodes` stays empty there.
LAUNCH_FAILED = re.compile(r"Terminating the node with id \S+ and ip (\S+)\. \(launch failed\)")


class ClusterConnectionError(ValueError):
    """No Ray cluster answers at an address, or it refuses this client; the message says why."""


def connect(address: str | None, **init_kwargs: Any) -> None:
    """Start a local Ray (``address`` None or ``"local"``) or join the cluster at ``address``
    (``"auto"``: the one ``ray start`` started on this machine, or a head's ``host:port``);
    ``init_kwargs`` go to ``ray.init``. A cluster is first checked, in well under a second, to
    answer and accept this client's token: ``ray.init`` retries for 20 s, then says only "Failed
    to connect" either way.

    Raises:
        ClusterConnectionError: no cluster answers at ``address``, or it refuses this client.
    """
    import ray

    if address not in (None, "local"):
        check_cluster(address)
        ray.init(address=address, **init_kwargs)
        return
    for attempt in range(1, LOCAL_START_TRIES + 1):
        before = _children()
        try:
            ray.init(address="local", **init_kwargs)
            return
        except Exception as e:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == LOCAL_START_TRIES:
                raise
            for pid in _children() - before:  # what the failed start left: its GCS, raylet
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            print(f"the local Ray did not start within Ray's 30 s (a busy machine?); trying "
                  f"again ({attempt + 1} of {LOCAL_START_TRIES})", file=sys.stderr)


def _children() -> set[int]:
    """This process's child processes."""
    return {pid for pid, (ppid, _start, _cmd) in _processes().items() if ppid == os.getpid()}


def check_cluster(address: str) -> str:
    """Return the ``host:port`` of the Ray cluster at ``address`` (``"auto"`` or ``host:port``).

    Raises:
        ClusterConnectionError: none answers there or it refuses this client; says the fix.
    """
    from ray._private import services  # what ray.init uses to resolve "auto"
    from ray._private.authentication import authentication_token_setup as token_setup
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.exceptions import AuthenticationError

    try:
        resolved = services.canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise ClusterConnectionError(
            f"--address {address}: no Ray cluster is running on this machine; start one first "
            "(`ray up CONFIG` on your machine, then `ray submit CONFIG search/run.py -- "
            "--address auto ...`), pass --address HOST:6379 of a cluster's head, or leave "
            "--address out to start a local Ray") from None
    if resolved is None:
        raise ClusterConnectionError(f"--address {address}: not a cluster address; use 'auto' "
                                     "or HOST:PORT, or leave --address out for a local Ray")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterConnectionError(
            f"--address {address}: no Ray cluster answers at {resolved} "
            f"({e.strerror or type(e).__name__}); check that it is up (`ray exec CONFIG "
            f"'ray status'`) and that this machine may reach port {port} of {host}") from None
    if address == "auto":  # ray.init turns token auth on when it finds a token with "auto"
        token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    mode, source = os.environ.get("RAY_AUTH_MODE", ""), token_source()
    if mode.lower() == "token" and source is None:
        raise ClusterConnectionError(
            f"--address {address}: RAY_AUTH_MODE=token but this machine has no token "
            f"($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or {TOKEN_FILE}); copy the cluster's token "
            f"to {TOKEN_FILE} (`ray get-auth-token` prints it where the cluster was made)")
    rejected = False
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)  # the core's retry lines would bury the reason given below
        try:
            GcsClient(address=resolved)
        except AuthenticationError:
            rejected = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not rejected:
                held.seek(0)
                os.write(2, held.read())
    if rejected and mode.lower() != "token":
        raise ClusterConnectionError(
            f"--address {address}: the Ray cluster at {resolved} requires token "
            f"authentication and RAY_AUTH_MODE is {mode or 'unset'} here; "
            f"export RAY_AUTH_MODE=token, with the cluster's token in {TOKEN_FILE}")
    if rejected:
        raise ClusterConnectionError(
            f"--address {address}: the Ray cluster at {resolved} rejected the token in "
            f"{source}; use the cluster's token (`ray up` copies the {TOKEN_FILE} of the "
            "machine that ran it to every node; `ray get-auth-token` prints it)")
    return resolved


def token_source() -> str | None:
    """Where Ray reads this client's token from (its order of precedence), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or (
        TOKEN_FILE if Path(TOKEN_FILE).expanduser().is_file() else None)


def expected_workers(config: dict[str, Any]) -> int:
    """Workers a launcher config starts with: the sum of its node types' ``min_workers``."""
    return sum(int(t.get("min_workers", 0)) for t in config["available_node_types"].values())


def wait_for_workers(config_path: str = BOOTSTRAP_CONFIG, timeout: float = 1800,
                     poll: float = 5) -> int:
    """On a launcher cluster's head: wait until every worker its config starts has joined.

    Run from ``head_start_ray_commands``, this makes ``ray up`` (which returns once the head is
    up) return once the whole cluster is. ``config_path`` is the config the launcher put on the
    head; the autoscaler's status is read every ``poll`` s. Returns the number that joined.

    Raises:
        ClusterConnectionError: a worker's setup failed, or not all joined within ``timeout`` s.
    """
    import yaml
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    want = expected_workers(yaml.safe_load(Path(config_path).expanduser().read_text()))
    if want == 0:
        print("no workers to wait for (they start when trials need them)", flush=True)
        return 0
    gcs = GcsClient(address=check_cluster("auto"))
    t0, shown = time.monotonic(), -30.0
    while True:
        raw = gcs.internal_kv_get(b"__autoscaling_status", namespace=None)  # as `ray status`
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
        failed = [ip for ip, _type in report.get("failed_nodes") or []]
        with contextlib.suppress(OSError):
            failed += LAUNCH_FAILED.findall(Path(AUTOSCALER_LOG).read_text(errors="replace"))
        if failed:
            print(_setup_output(), file=sys.stderr)
            raise ClusterConnectionError(
                f"worker {failed[0]} failed to set up (the end of its output is above, all of "
                f"it in the head's {MONITOR_LOG}); fix it and run `ray up CONFIG` again")
        joined = sum((report.get("active_nodes") or {}).values()) - 1  # less the head
        pending = ", ".join(f"{ip} {status}" for ip, _t, status in
                            report.get("pending_nodes") or [])
        waited = time.monotonic() - t0
        if joined >= want:
            print(f"all {want} workers joined ({waited:.0f} s)", flush=True)
            return joined
        if waited > timeout:
            raise ClusterConnectionError(
                f"{joined} of {want} workers joined in {timeout:.0f} s (still pending: "
                f"{pending or 'none started'}); see the head's {MONITOR_LOG}")
        if waited - shown >= 30:
            print(f"waiting for workers: {joined} of {want} joined; {pending or 'starting'}",
                  flush=True)
            shown = waited
        time.sleep(poll)


def _setup_output(lines: int = 40) -> str:
    """The end of the head's worker-setup log, without the launcher's ssh command lines."""
    try:
        text = Path(MONITOR_LOG).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({MONITOR_LOG} unreadable: {e})"
    return "\n".join([ln for ln in text if "VINFO" not in ln][-lines:])  # VINFO and VVINFO


def start_worker(head: str) -> int:
    """``ray start --address=HEAD`` on this node, then a detached reaper for its session;
    returns ``ray start``'s exit status. (``ray down`` of a ``provider: local`` cluster stops Ray
    on the head only, and a worker's log monitor outlives its raylet.)"""
    from ray._common.utils import get_default_ray_temp_dir

    r = subprocess.run([str(Path(sys.executable).with_name("ray")), "start",
                        f"--address={head}"])
    if r.returncode != 0:
        return r.returncode
    session = (Path(get_default_ray_temp_dir()) / "session_latest").resolve()
    subprocess.Popen([sys.executable, "-m", "search.connect", "--reap", str(session),
                      "--head", head], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, cwd="/", start_new_session=True)
    print(f"reaper started for {session}", flush=True)
    return 0


def reap(session: str, head: str, poll: float = 2, refusals: int = 3) -> None:
    """End this node's Ray session (folder ``session``) once it has lost its head: once its
    raylet has exited, or the head's GCS (``head``, ``host:port``) refused ``refusals`` looks in a
    row, ``poll`` s apart (a timeout, as a network fault gives, does not count). The raylet, its
    children and any process naming the session folder get SIGTERM, then SIGKILL 5 s later."""
    raylet, members = _session(session, _processes())
    if raylet is None:
        return
    refused = 0
    while refused < refusals:
        time.sleep(poll)
        procs = _processes()
        if procs.get(raylet, (0, -1, ""))[1] != members[raylet]:
            break  # the raylet exited (or its PID now belongs to another process)
        members.update(_session(session, procs)[1])  # workers started since
        refused = refused + 1 if _refused(head) else 0

    def alive() -> list[int]:  # a PID with another start time is another process now
        return [pid for pid, (_ppid, start, _cmd) in _processes().items()
                if members.get(pid) == start]

    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive():
            time.sleep(0.2)


def _session(session: str, procs: dict[int, tuple[int, int, str]]
             ) -> tuple[int | None, dict[int, int]]:
    """The session's raylet PID and ``{pid: start time}`` of its processes."""
    raylet = next((pid for pid, (_ppid, _start, cmd) in procs.items()
                   if session in cmd and cmd.split(" ", 1)[0].endswith("/raylet")), None)
    members = {pid: start for pid, (ppid, start, cmd) in procs.items()
               if session in cmd or (raylet is not None and ppid == raylet)}
    return raylet, members


def _refused(address: str) -> bool:
    """Whether ``address`` refuses a TCP connection (a timeout is no refusal)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        return isinstance(e, ConnectionRefusedError)
    return False


def _processes() -> dict[int, tuple[int, int, str]]:
    """``{pid: (parent pid, start time, command line)}`` of this user's other processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # it exited meanwhile
            if entry.stat().st_uid == os.getuid():
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                found[int(entry.name)] = (int(stat[1]), int(stat[19]),
                                          cmd.decode(errors="replace").strip())
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    todo = p.add_mutually_exclusive_group(required=True)
    todo.add_argument("--wait-for-workers", action="store_true",
                      help="wait until the launcher's workers joined (run on the head)")
    todo.add_argument("--start-worker", metavar="HEAD:PORT",
                      help="ray start --address=HEAD:PORT, with a reaper for the session")
    todo.add_argument("--reap", metavar="SESSION_DIR", help=argparse.SUPPRESS)
    p.add_argument("--head", help=argparse.SUPPRESS)  # with --reap: the head's GCS host:port
    p.add_argument("--config", default=BOOTSTRAP_CONFIG, help="the launcher's config on the head")
    p.add_argument("--timeout", type=float, default=1800, help="seconds (1800)")
    args = p.parse_args(argv)
    if args.start_worker:
        return start_worker(args.start_worker)
    if args.reap:
        reap(args.reap, args.head)
        return 0
    try:
        wait_for_workers(args.config, args.timeout)
    except ClusterConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
