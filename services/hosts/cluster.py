"""The cluster's processes: on each host, ``shoal up --headless --only ...`` with that host's
config, as ``ip netns exec HOST python -m shoal.services.cli up ...`` (``ip netns exec``
execs the program, so the process started is the host's supervisor itself).

Usage, from a process that reaches the hosts (the ops host: ``netns.enter``)::

    with HostsCluster(layout) as cluster:   # started, every service answering its ctl
        ...
    # stopped (Ctrl-C to each supervisor, SIGKILL of its group if it hangs); cluster.log_path
    # holds every host's log, each line prefixed with its host
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

from .layout import Layout
from .netns import tool

START_TIMEOUT_S = 40.0


class HostsCluster:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.net = layout.net()
        self.workdir = Path(layout.workdir)
        self.log_path = self.workdir / "cluster.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def _host_log(self, host: str) -> Path:
        return self.workdir / "hosts" / f"{host}.log"

    def start(self) -> None:
        ip = tool("ip") or "ip"
        for h in self.layout.hosts:
            if not h.runs:
                continue
            argv = [ip, "netns", "exec", self.net.netns(h.name), sys.executable, "-m"]
            argv += ["shoal.services.cli", "up", "--headless", "--boards", "0"]
            argv += ["--config", str(self.layout.config_path(h.name))]
            argv += [f"--only={name}" for name in h.runs]
            log = open(self._host_log(h.name), "ab")  # noqa: SIM115 (closed in stop)
            self._logs[h.name] = log
            self.procs[h.name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )

    def endpoints(self) -> dict[str, str]:
        """Every service's ctl endpoint, by "host/service"."""
        out: dict[str, str] = {}
        for h in self.layout.hosts:
            if not h.runs:
                continue
            config = self.layout.config(h.name)
            out[f"{h.name}/supervisor"] = config.supervisor.ctl
            for name in h.runs:
                out[f"{h.name}/{name}"] = (
                    config.sim.ctl if name == "sim" else getattr(config, name).ctl
                )
        return out

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str | None:
        """None once every service of every host answers ``ping``; else what is missing
        (a host's supervisor exited, or the time ran out)."""
        waiting = self.endpoints()
        deadline = time.monotonic() + timeout_s
        while waiting:
            for host, proc in self.procs.items():
                if proc.poll() is not None:
                    return f"the supervisor of {host} exited ({proc.returncode}): see {self._host_log(host)}"
            for name, endpoint in list(waiting.items()):
                try:
                    with CtlClient(endpoint) as client:
                        client.call("ping", timeout_s=0.3, retries=0)
                    del waiting[name]
                except (CtlFailed, CtlUnavailable):
                    pass
            if time.monotonic() > deadline:
                return f"not answering after {timeout_s:g} s: {', '.join(sorted(waiting))}"
            time.sleep(0.05)
        return None

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self._merge_logs()

    def _merge_logs(self) -> None:
        with open(self.log_path, "w", errors="replace") as out:
            for h in self.layout.hosts:
                path = self._host_log(h.name)
                if not path.exists():
                    continue
                for line in path.read_text(errors="replace").splitlines():
                    out.write(f"{h.name:<8}| {line}\n")

    def __enter__(self) -> HostsCluster:
        self.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
