"""The relay as a real child process (`shoal run relay`), for the benchmarks that measure it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq


class RelayProcess:
    """``shoal run relay`` in its own process, with a TOML config on free ports.

    Usage::

        with RelayProcess(rate_per_node_hz=1e9) as relay:
            relay.status()["counters"]["accepted"]
    """

    def __init__(
        self,
        profile_to: str | None = None,
        curve: bool = True,
        config: Any = None,
        shard: int = 0,
        **relay_keys: Any,
    ) -> None:
        """config: a ShoalConfig to run with (several shards share one), else one made on
        free ports with relay_keys; shard: which of its relay shards this process is."""
        from shoal.services.runtime.config import dump_toml, relay_shards
        from shoal.services.testing import config_on_free_ports

        self.config = config or config_on_free_ports(
            relay=relay_keys,
            runtime={"log_level": "warning", "heartbeat_interval_ms": 100},
            security={"curve": curve},
        )
        self.shard = shard
        self.endpoints = relay_shards(self.config)[shard]
        # Where its clients' keys are (None: plain, Curve off).
        self.keys: str | None = self.config.security.keys if self.config.security.curve else None
        self._dir = tempfile.TemporaryDirectory(prefix="shoal-bench-")
        self.config_path = Path(self._dir.name) / "relay.toml"
        self.config_path.write_text(dump_toml(self.config))
        self.log_path = Path(self._dir.name) / "relay.log"
        self.profile_to = profile_to
        self.proc: subprocess.Popen[bytes] | None = None
        self._ps: Any = None
        self._ctl: Any = None

    @property
    def ingest(self) -> str:
        return self.endpoints.ingest

    @property
    def bus(self) -> str:
        return self.endpoints.bus

    def command(self) -> list[str]:
        """What runs the relay, after ``python``: override to measure a variant."""
        argv = ["-m", "shoal.services.cli", "run", "relay", "--config", str(self.config_path)]
        return argv + (["--shard", str(self.shard)] if self.shard else [])

    def start(self, timeout_s: float = 20.0) -> None:
        import psutil

        from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable

        cmd = [sys.executable]
        if self.profile_to:
            cmd += ["-m", "cProfile", "-o", self.profile_to]
        cmd += self.command()
        # SHOAL_* variables would override the file's endpoints (config.ENV_ENDPOINTS).
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        # As if we were its supervisor: the relay dies with us (PR_SET_PDEATHSIG), even if
        # we are killed before our finally blocks run.
        env.update(SHOAL_SUPERVISED="1", SHOAL_SUPERVISOR_PID=str(os.getpid()))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._ps = psutil.Process(self.proc.pid)
        self._ctl = CtlClient(self.endpoints.ctl, ctx=zmq.Context())
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self._ctl.call("ping", timeout_s=0.5, retries=0)
                return
            except CtlUnavailable:
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    raise TimeoutError(f"relay not up within {timeout_s}s: {tail}") from None

    def status(self) -> dict[str, Any]:
        return self._ctl.call("status", timeout_s=5.0)  # type: ignore[no-any-return]

    def rss_mb(self) -> float:
        return round(self._ps.memory_info().rss / 2**20, 1)

    def peak_rss_mb(self) -> float | None:
        """The process's RSS high-water mark (Linux VmHWM), None where unknown."""
        try:
            for line in Path(f"/proc/{self._ps.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError, IndexError):
            pass
        return None

    def cpu_s(self) -> float:
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl.ctx.term()
            self._ctl = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the relay stops in order (and cProfile dumps)
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self._dir.cleanup()

    def __enter__(self) -> RelayProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
