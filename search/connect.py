"""Join and leave Ray clusters: connect a driver, wait for a launcher's workers, start a worker.

    python -m search.connect --wait-for-workers   # on a `ray up` head: wait until every worker
                                                  # the config names has joined, or fail naming
                                                  # the node whose setup failed
    python -m search.connect --start-worker HEAD:6379   # on a worker: `ray start`, and stop
                                                        # what Ray leaves once the head is gone

:func:`connect` is how ``search/run.py`` starts Ray (``--address``): with no address it starts a
local Ray; with one it first checks, in well under a second, that a cluster answers there and
accepts this client's token, because ``ray.init`` itself retries for 20 s and then reports only
"Failed to connect" in both cases. Ray's token authentication (2.60: on for a local
``ray.init``, and for ``ray start`` where a token exists) needs ``RAY_AUTH_MODE=token`` and the
cluster's token in ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``; the launcher configs (``cluster.yaml``, ``cluster-onprem.yaml``) set both
up on every node.

``ray down`` of a ``provider: local`` cluster runs ``ray stop`` on the head only. A worker's
raylet exits 60 s after it loses the head's GCS, but its log monitor stays for good; so a worker
started with ``--start-worker`` gets a small reaper that ends its Ray session's processes once
the head refuses connections or the session's raylet is gone. It touches no other session, so
a restart (``ray stop; ray start``) never races it. All of this is Linux-only (``/proc``), like
the launcher's on-prem nodes.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOKEN_FILE = "~/.ray/auth_token"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the launcher writes it on the head
MONITOR_LOG = "/tmp/ray/session_latest/logs/monitor.out"  # the head's worker setup output
AUTOSCALER_LOG = "/tmp/ray/session_latest/logs/monitor.log"  # its decisions
# a local ray.init gives its raylet 30 s to register (fixed in Ray 2.60); on a loaded machine
# that can pass, so the start is tried again
LOCAL_START_TRIES = 3
# How the autoscaler (v1) logs a node whose setup or start failed. The status it publishes lists
# such a node only until it relaunches it; a `provider: local` node is relaunched under the
# same IP at once, so `failed_nodes` stays empty there.
LAUNCH_FAILED = re.compile(r"Terminating the node with id \S+ and ip (\S+)\. \(launch failed\)")


class ClusterConnectionError(ValueError):
    """No Ray cluster answers at an address, or it refuses this client; the message says why."""


def connect(address: str | None, **init_kwargs: Any) -> None:
    """Start a local Ray (``address`` None or ``"local"``) or join the cluster at ``address``.

    Args:
        address: ``None``/``"local"`` (a new local Ray), ``"auto"`` (the cluster ``ray start``
            started on this machine) or ``host:port`` of a cluster's head.
        **init_kwargs: passed on to ``ray.init``.

    Raises:
        ClusterConnectionError: no cluster answers at ``address``, or it requires a token
            this client does not have; one line naming the cause and the fix.
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
    """This process's child processes (Linux ``/proc``; empty elsewhere)."""
    me, kids = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                kids.add(int(stat.parent.name))
    return kids


def check_cluster(address: str) -> str:
    """Check that a Ray cluster answers at ``address`` and accepts this client's token.

    Args:
        address: ``"auto"`` or ``host:port``.

    Returns:
        The cluster's ``host:port``.

    Raises:
        ClusterConnectionError: with the cause and the fix.
    """
    from ray._private import services  # what ray.init uses to resolve "auto"
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
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
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    mode = os.environ.get("RAY_AUTH_MODE", "")
    source = token_source()
    if mode.lower() == "token" and source is None:
        raise ClusterConnectionError(
            f"--address {address}: RAY_AUTH_MODE=token but this machine has no token "
            f"($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or {TOKEN_FILE}); copy the cluster's token "
            f"to {TOKEN_FILE} (`ray get-auth-token` prints it where the cluster was made)")
    try:
        with _stderr_held(drop_on=AuthenticationError):  # the core's retry lines bury the
            GcsClient(address=resolved)                   # reason given below
    except AuthenticationError:
        if mode.lower() != "token":
            raise ClusterConnectionError(
                f"--address {address}: the Ray cluster at {resolved} requires token "
                f"authentication and RAY_AUTH_MODE is {mode or 'unset'} here; "
                f"export RAY_AUTH_MODE=token, with the cluster's token in {TOKEN_FILE}") from None
        raise ClusterConnectionError(
            f"--address {address}: the Ray cluster at {resolved} rejected the token in "
            f"{source}; use the cluster's token (`ray up` copies the {TOKEN_FILE} of the "
            "machine that ran it to every node; `ray get-auth-token` prints it)") from None
    return resolved


@contextlib.contextmanager
def _stderr_held(drop_on: type[BaseException]) -> Iterator[None]:
    """Hold back what C++ code writes to stderr meanwhile: dropped if ``drop_on`` is raised
    (the caller explains it in one line), written out otherwise."""
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    drop = False
    try:
        yield
    except drop_on:
        drop = True
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if not drop:
            held.seek(0)
            os.write(2, held.read())
        held.close()


def token_source() -> str | None:
    """Where Ray reads this client's token from (its order of precedence), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    return TOKEN_FILE if Path(TOKEN_FILE).expanduser().is_file() else None


def expected_workers(config: dict[str, Any]) -> int:
    """Workers a launcher config starts with: the sum of its node types' ``min_workers``."""
    return sum(int(t.get("min_workers", 0)) for t in config["available_node_types"].values())


def wait_for_workers(config_path: str = BOOTSTRAP_CONFIG, timeout: float = 1800,
                     poll: float = 5) -> int:
    """On a launcher cluster's head: wait until every worker its config starts has joined.

    The launcher's ``ray up`` returns once the head is up; the head's autoscaler then sets up
    the workers. Run from ``head_start_ray_commands``, this makes ``ray up`` return when the
    whole cluster is there, or fail with the node whose setup failed.

    Args:
        config_path: the config the launcher put on the head.
        timeout: seconds to wait at most.
        poll: seconds between looks at the autoscaler's status.

    Returns:
        The number of workers that joined.

    Raises:
        ClusterConnectionError: a worker's setup failed, or not all joined within ``timeout``.
    """
    import yaml
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    config = yaml.safe_load(Path(config_path).expanduser().read_text())
    want = expected_workers(config)
    if want == 0:
        print("no workers to wait for (they start when trials need them)", flush=True)
        return 0
    gcs = GcsClient(address=check_cluster("auto"))
    t0 = time.monotonic()
    shown = -30.0
    while True:
        raw = gcs.internal_kv_get(b"__autoscaling_status", namespace=None)  # what `ray status`
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}  # reads
        failed = [ip for ip, _type in report.get("failed_nodes") or []] + _launch_failures()
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


def _launch_failures() -> list[str]:
    """IPs of nodes whose setup failed, from this session's autoscaler log."""
    try:
        return LAUNCH_FAILED.findall(Path(AUTOSCALER_LOG).read_text(errors="replace"))
    except OSError:
        return []


def _setup_output(lines: int = 40) -> str:
    """The end of the head's worker-setup log, without the launcher's ssh command lines."""
    try:
        text = Path(MONITOR_LOG).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({MONITOR_LOG} unreadable: {e})"
    kept = [ln for ln in text if "VVINFO" not in ln and "VINFO" not in ln]
    return "\n".join(kept[-lines:])


def start_worker(head: str) -> int:
    """``ray start --address=HEAD`` on this node, then a detached reaper for its session.

    Args:
        head: the head's ``host:port``.

    Returns:
        ``ray start``'s exit status.
    """
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
    """End this node's Ray session once it has lost its head.

    The session's processes (its raylet, the raylet's children and any process naming the
    session folder) are stopped, SIGTERM then SIGKILL 5 s later, when the raylet has exited or
    when the head refused connections to its GCS port ``refusals`` looks in a row (``ray down``
    stopped it; a timeout, as a network fault gives, does not count).

    Args:
        session: this node's Ray session folder (``/tmp/ray/session_...``).
        head: the head's GCS ``host:port``.
        poll: seconds between looks.
        refusals: refused connections in a row that mean the head is gone.
    """
    raylet, members = _session(session)
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
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        alive = [pid for pid, (_ppid, start, _cmd) in _processes().items()
                 if members.get(pid) == start]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                members.get(pid) == start for pid, (_p, start, _c) in _processes().items()):
            time.sleep(0.2)


def _session(session: str, procs: dict[int, tuple[int, int, str]] | None = None
             ) -> tuple[int | None, dict[int, int]]:
    """The session's raylet PID and ``{pid: start time}`` of its processes."""
    procs = _processes() if procs is None else procs
    raylet = next((pid for pid, (_ppid, _start, cmd) in procs.items()
                   if session in cmd and cmd.split(" ", 1)[0].endswith("/raylet")), None)
    members = {pid: start for pid, (ppid, start, cmd) in procs.items()
               if session in cmd or (raylet is not None and ppid == raylet)}
    return raylet, members


def _refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def _processes() -> dict[int, tuple[int, int, str]]:
    """``{pid: (parent pid, start time, command line)}`` of this user's processes (Linux
    ``/proc``), this one left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        found[int(entry.name)] = (int(stat[1]), int(stat[19]), cmd.strip())
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
