"""SSH hosts made on this machine, to run the real Ray cluster launcher against.

Each host is a network namespace with its own address on a private bridge, its own PID
namespace (``ray stop`` on one host sees only that host's processes), its own ``/tmp`` (Ray
keeps its session folders, sockets and the launcher's node state there) and its own sshd. All
hosts log in one user made for the test, with a key made for the test, and otherwise share this
machine's filesystem: one home folder, so one ``~/venv``, ``~/.ray`` and ``~/.bashrc``.
Everything is undone on exit, after a failure too: the hosts' processes (stopping a host's sshd
ends its PID namespace), the user, the namespaces, the bridge and the files.

Needs root, iproute2, openssh-server, rsync and a system ``python3`` with ``venv``.

    sudo .venv/bin/python tests/launcher/hosts.py 2     # make 2 hosts, print how to reach them,
                                                        # remove everything on Ctrl-C
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # what a fresh user's login shell has
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
               "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]
SSHD_CONFIG = """\
ListenAddress {ip}
HostKey {host_key}
PidFile none
UsePAM no
PermitRootLogin no
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
MaxStartups 100:30:200
MaxSessions 100
PrintMotd no
Subsystem sftp internal-sftp
"""


@dataclass
class Hosts:
    """The hosts made by :func:`ssh_hosts`; ``ips[0]`` is meant for the head."""

    user: str
    uid: int
    home: Path  # the user's home folder, the same on every host
    local_home: Path  # a HOME for the launcher's side: holds .ssh/id_ed25519 (the user's key)
    key: Path
    ips: list[str]
    base: Path  # everything made on disk lives under here

    def ssh(self, ip: str, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``command`` on host ``ip`` in a login shell, as the launcher runs its commands."""
        remote = shlex.quote(f"source ~/.bashrc; {command}")
        return subprocess.run(["ssh", *SSH_OPTIONS, "-i", str(self.key), f"{self.user}@{ip}",
                               f"bash --login -c -i {remote}"],
                              capture_output=True, text=True, timeout=timeout)

    def processes(self) -> list[tuple[int, str]]:
        """``(pid, command line)`` of every process the test user runs, on any host."""
        return _user_processes(self.uid)


def unavailable() -> str | None:
    """Why hosts cannot be made on this machine (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a user made for the test, sshd)"
    for tool in ("ip", "ssh", "ssh-keygen", "rsync", "useradd", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install -y openssh-server rsync iproute2)"
    if not Path(SSHD).is_file():
        return f"{SSHD} not found (apt-get install -y openssh-server)"
    python = shutil.which("python3", path=LOGIN_PATH)
    if python is None or subprocess.run([python, "-c", "import ensurepip, venv"],
                                        capture_output=True).returncode != 0:
        return (f"no python3 with venv on a login shell's PATH ({LOGIN_PATH}): "
                "apt-get install -y python3-venv")
    probe = f"cnmc-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` fails here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextlib.contextmanager
def ssh_hosts(n: int = 2, sshd_extra: dict[int, str] | None = None) -> Iterator[Hosts]:
    """Make ``n`` SSH hosts for one new user; remove all of it on exit.

    Args:
        n: how many hosts (network namespaces, each with its sshd).
        sshd_extra: more ``sshd_config`` lines for host ``i`` (e.g. ``SetEnv`` for its logins).

    Yields:
        The hosts, reachable from this machine at ``Hosts.ips`` with ``Hosts.key``.
    """
    undo: list[tuple[str, Callable[[], object]]] = []
    try:
        yield _make(n, undo, sshd_extra or {})
    finally:
        problems = []
        for what, step in reversed(undo):
            try:
                step()
            except Exception as e:  # keep undoing the rest
                problems.append(f"{what}: {e}")
        if problems:
            print("launcher hosts: cleanup problems: " + "; ".join(problems), file=sys.stderr)


def _make(n: int, undo: list[tuple[str, Callable[[], object]]],
          sshd_extra: dict[int, str]) -> Hosts:
    tag = str(os.getpid() % 100000)
    user = f"cnmcl{tag}"
    base = Path(f"/var/tmp/cnmc-launcher-{tag}")  # not /tmp: each host mounts its own /tmp
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    base.chmod(0o755)
    undo.append((f"remove {base}", lambda: shutil.rmtree(base, ignore_errors=True)))

    home = base / "home"
    _run(["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/bash",
          "--user-group", user])
    uid = pwd.getpwnam(user).pw_uid
    undo.append((f"delete user {user}", lambda: (_kill_user(uid), _run(["userdel", user]))))
    _run(["usermod", "--password", "*", user])  # sshd without PAM refuses a locked ("!") account

    local = base / "local"
    (local / ".ssh").mkdir(parents=True)
    local.chmod(0o700)
    key = local / ".ssh" / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@launcher-test",
          "-f", str(key)])
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    _run(["chown", "-R", f"{user}:{user}", str(ssh_dir)])

    net = _free_subnet()
    gateway = str(net[1])
    bridge = f"cnbr{tag}"
    _run(["ip", "link", "add", bridge, "type", "bridge"])
    undo.append((f"delete bridge {bridge}", lambda: _run(["ip", "link", "del", bridge])))
    _run(["ip", "addr", "add", f"{gateway}/{net.prefixlen}", "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder

    ips = []
    for i in range(n):
        ns, ip, veth = f"cnmc{tag}-{i}", str(net[2 + i]), f"cnv{i}x{tag}"
        _run(["ip", "netns", "add", ns])
        undo.append((f"delete netns {ns}", lambda ns=ns: _run(["ip", "netns", "del", ns])))
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "link", "set", veth, "master", bridge, "up"])
        for args in (["addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0"],
                     ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"],
                     ["route", "add", "default", "via", gateway]):  # Ray finds its IP by route
            _run(["ip", "-n", ns, *args])
        host = base / f"host{i}"
        (host / "tmp").mkdir(parents=True)
        (host / "tmp").chmod(0o1777)
        host_key = host / "ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        config = host / "sshd_config"
        config.write_text(SSHD_CONFIG.format(ip=ip, host_key=host_key, user=user)
                          + sshd_extra.get(i, "") + "\n")
        inner = f"mount --bind {shlex.quote(str(host / 'tmp'))} /tmp && " \
                f"exec {SSHD} -D -e -f {shlex.quote(str(config))}"
        # unshare: sshd is PID 1 of a PID namespace; when it dies, all of the host's processes do
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--pid", "--fork", "--kill-child",
             "--mount-proc", "sh", "-c", inner],
            stdout=(host / "sshd.log").open("w"), stderr=subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True)
        undo.append((f"stop host {ip}", lambda proc=proc: _stop(proc)))
        ips.append(ip)

    hosts = Hosts(user=user, uid=uid, home=home, local_home=local, key=key, ips=ips, base=base)
    for i, ip in enumerate(ips):
        deadline = time.monotonic() + 30
        while (r := hosts.ssh(ip, "true", timeout=30)).returncode != 0:
            if time.monotonic() > deadline:
                log = (base / f"host{i}" / "sshd.log").read_text()[-2000:]
                raise RuntimeError(f"sshd on {ip} does not accept {user}'s key: {r.stderr}{log}")
            time.sleep(0.5)
    return hosts


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no interface or route on this machine uses yet."""
    used = _run(["ip", "-4", "-o", "addr"]) + _run(["ip", "-4", "route"])
    start = os.getpid() % 256
    for k in range(256):
        prefix = f"10.213.{(start + k) % 256}."
        if prefix not in used:
            return ipaddress.ip_network(prefix + "0/24")
    raise RuntimeError("no free /24 in 10.213.0.0/16 for the test hosts")


def _user_processes(uid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        found.append((int(entry.name), cmd.strip()))
    return found


def _kill_user(uid: int) -> None:
    """SIGKILL the test user's processes, by PID (they are all this test's)."""
    for _ in range(50):
        procs = _user_processes(uid)
        if not procs:
            return
        for pid, _cmd in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    # unshare ignores SIGTERM while it waits; killed, its child sshd (PID 1 of the host's PID
    # namespace) gets SIGKILL, and with it every process of that host
    proc.kill()
    proc.wait(timeout=10)


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 2
    if reason := unavailable():
        print(f"cannot make hosts: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on kill too
    with ssh_hosts(n) as hosts:
        print(f"user {hosts.user}, home {hosts.home}, key {hosts.key}")
        for ip in hosts.ips:
            print(f"  ssh -i {hosts.key} {hosts.user}@{ip}")
        print("Ctrl-C removes them")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
