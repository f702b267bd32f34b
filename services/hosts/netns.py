"""Network namespaces as hosts: a private switch, one veth per host, link-local addresses.

::

    shoalnet-PID-K-sw      br0 --+-- p-bus  <veth>  eth0 169.254.77.10   shoalnet-PID-K-bus
                                 +-- p-ops  <veth>  eth0 169.254.77.2    shoalnet-PID-K-ops
                                 +-- p-fleet-a ...  eth0 169.254.77.21   shoalnet-PID-K-fleet-a

Every interface is made inside a namespace of this run (``ip -n NS link add ... peer
... netns NS2``), never in the machine's own, and the namespaces have no route but their
/24: nothing sent there can leave the machine. Names carry the creating process's pid, so a
later run removes what a killed one left (``remove_leftovers``) and two runs at once never
meet. Tearing down kills whatever still runs in the namespaces (processes this run started
there), then deletes them; deleting a namespace deletes its end of each veth, and so the
pair.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator

PREFIX = "shoalnet"
SUBNET = "169.254.77"  # link-local: a /24 of it per run, inside the run's own switch
PREFIX_LEN = 24
CLONE_NEWNET = 0x40000000
_runs = itertools.count()


class NetnsError(Exception):
    """A namespace, link or address could not be made (the message has ip's own words)."""


def tool(name: str) -> str | None:
    """The path of ``ip`` or ``tc``: on PATH, or where iproute2 puts them."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


def run(argv: list[str], check: bool = True, stdin: str | None = None) -> str:
    """Run an iproute2 command; its stdout. NetnsError (with its stderr) if it fails."""
    exe = tool(argv[0])
    if exe is None:
        raise NetnsError(f"no {argv[0]} (iproute2) on this machine")
    done = subprocess.run(
        [exe, *argv[1:]], input=stdin, capture_output=True, text=True, timeout=20, check=False
    )
    if check and done.returncode != 0:
        words = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise NetnsError(f"{' '.join(argv)}: {words or f'exit {done.returncode}'}")
    return done.stdout


def unavailable() -> str | None:
    """Why hosts cannot be made here (not Linux, not root, no iproute2, no namespaces), or
    None. Makes and removes one namespace to find out."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "making network namespaces needs root (run as root, or in CI)"
    for name in ("ip", "tc"):
        if tool(name) is None:
            return f"no `{name}` command (install iproute2)"
    probe = f"{PREFIX}-{os.getpid()}-probe{next(_runs)}"
    try:
        run(["ip", "netns", "add", probe])
        run(["ip", "-n", probe, "link", "add", "name", "v0", "type", "veth", "peer", "name", "v1"])
    except NetnsError as err:
        return f"cannot make a network namespace with a veth: {err}"
    finally:
        run(["ip", "netns", "del", probe], check=False)
    return None


def namespaces() -> list[str]:
    """Every named network namespace (``ip netns list``)."""
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def destroy(names: Iterable[str]) -> None:
    """Kill what runs in these namespaces (SIGKILL: a clean stop was the cluster's job),
    then delete them. Goes on past errors: a teardown must finish."""
    names = list(names)
    for netns in names:
        for pid in pids_in(netns):
            if pid == os.getpid():
                continue  # this process, visiting (``entered``)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(p != os.getpid() for n in names for p in pids_in(n)):
        time.sleep(0.05)
    for netns in names:
        run(["ip", "netns", "del", netns], check=False)


def _owner(netns: str) -> int | None:
    """The pid a namespace of ours was made by (``shoalnet-PID-...``), or None."""
    parts = netns.split("-")
    if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
        return None
    return int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Remove the namespaces of runs whose process is gone (a SIGKILLed run, a crash);
    returns their names. Another live run's namespaces are left alone."""
    stale = [n for n in namespaces() if (pid := _owner(n)) is not None and not _alive(pid)]
    destroy(stale)
    return stale


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise NetnsError(f"setns {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """The calling thread in ``netns`` (setns(2)) for the block, then back where it was;
    threads and processes it starts meanwhile are there too. For the fault injector of
    ``shoal chaos run --hosts``, before it opens any socket: a ZeroMQ context made earlier
    keeps its I/O threads, which make the connections, in the namespace they began in."""
    home = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    back = os.open(home, os.O_RDONLY)
    try:
        _setns(f"/run/netns/{netns}")
        try:
            yield
        finally:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.setns(back, CLONE_NEWNET)
    finally:
        os.close(back)


class Net:
    """The hosts of one run: ``Net({"bus": 10, "ops": 2, ...})`` (host name -> last byte of
    its address). ``build()`` makes them, ``teardown()`` removes them; as a context manager,
    both (teardown also when the build failed half way)."""

    def __init__(self, hosts: dict[str, int], run_id: str | None = None) -> None:
        for name in hosts:
            if len(f"p-{name}") > 15:  # an interface name is at most 15 bytes
                raise ValueError(f"host name {name!r} is too long (at most 13 characters)")
        self.hosts = dict(hosts)
        self.run_id = run_id or f"{os.getpid()}-{next(_runs)}"
        self.switch = f"{PREFIX}-{self.run_id}-sw"
        self.built: list[str] = []

    def netns(self, host: str) -> str:
        return f"{PREFIX}-{self.run_id}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    def build(self) -> Net:
        remove_leftovers()
        self._add(self.switch)
        sw = ["ip", "-n", self.switch]
        run([*sw, "link", "add", "name", "br0", "type", "bridge"])
        run([*sw, "link", "set", "dev", "br0", "up"])
        for host in self.hosts:
            ns = self.netns(host)
            self._add(ns)
            port = f"p-{host}"
            run(
                [
                    *sw,
                    "link",
                    "add",
                    "name",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ]
            )
            run([*sw, "link", "set", "dev", port, "master", "br0", "up"])
            run(
                ["ip", "-n", ns, "addr", "add", f"{self.address(host)}/{PREFIX_LEN}", "dev", "eth0"]
            )
            run(["ip", "-n", ns, "link", "set", "dev", "eth0", "up"])
        self._wait_up()
        return self

    def _add(self, netns: str) -> None:
        run(["ip", "netns", "add", netns])
        self.built.append(netns)
        run(["ip", "-n", netns, "link", "set", "dev", "lo", "up"])

    def _wait_up(self, timeout_s: float = 5.0) -> None:
        """Until every host's address can be bound (IPv4 has no duplicate address
        detection, but the link must be up)."""
        deadline = time.monotonic() + timeout_s
        for host in self.hosts:
            while "state UP" not in run(["ip", "-n", self.netns(host), "link", "show", "eth0"]):
                if time.monotonic() > deadline:
                    raise NetnsError(f"eth0 of {self.netns(host)} did not come up")
                time.sleep(0.02)

    def teardown(self) -> None:
        hosts = [n for n in self.built if n != self.switch]
        destroy(hosts)  # their processes first
        destroy([n for n in self.built if n == self.switch])
        self.built.clear()

    def __enter__(self) -> Net:
        try:
            return self.build()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.teardown()
