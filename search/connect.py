"""Connect to Ray, and wait for a launcher cluster's workers, with errors that say the fix.

    python -m search.connect --wait-for-workers   # on a `ray up` head: wait until every worker
                                                  # the config names has joined, or fail naming
                                                  # the node whose setup failed

:func:`connect` is how ``search/run.py`` starts Ray (``--address``): with no address it starts a
local Ray; with one it first checks, in well under a second, that a cluster answers there and
accepts this client's token, because ``ray.init`` itself retries for 20 s and then reports only
"Failed to connect" in both cases. Ray's token authentication (on by default since Ray 2.59 for
clusters ``ray start`` makes) needs ``RAY_AUTH_MODE=token`` and the cluster's token in
``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; the launcher
configs (``cluster.yaml``, ``cluster-onprem.yaml``) set both up on every node.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

TOKEN_FILE = "~/.ray/auth_token"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the launcher writes it on the head
MONITOR_LOG = "/tmp/ray/session_latest/logs/monitor.out"  # the head's worker setup output


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
    ray.init(address=address or "local", **init_kwargs)


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
    from ray._raylet import GcsClient
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
        GcsClient(address=resolved)
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
    from ray._raylet import GcsClient

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
        for ip, node_type in report.get("failed_nodes") or []:
            raise ClusterConnectionError(
                f"worker {ip} ({node_type}) failed to set up; its setup output is in the "
                f"head's {MONITOR_LOG} (`ray exec CONFIG 'tail -n 80 {MONITOR_LOG}'`); fix it "
                "and run `ray up CONFIG` again")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wait-for-workers", action="store_true",
                   help="wait until the launcher's workers joined (run on the head)")
    p.add_argument("--config", default=BOOTSTRAP_CONFIG, help="the launcher's config on the head")
    p.add_argument("--timeout", type=float, default=1800, help="seconds (1800)")
    args = p.parse_args(argv)
    if not args.wait_for_workers:
        p.error("nothing to do: pass --wait-for-workers")
    try:
        wait_for_workers(args.config, args.timeout)
    except ClusterConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
