"""One fault-injection scenario at a time, for the console: the injector as a subprocess.

``shoal chaos run FILE --attach --config CFG --report REPORT`` runs against the cluster the
console is attached to (CFG: the console's config, written to a temporary TOML file).
Threads read its stderr (a progress line every few seconds) and wait for its end (the last
stdout line gives the verdict); the state is an immutable ``ScenarioRun`` (tui/model.py)
swapped in whole, so the UI reads it without a lock and never waits on the process.

Usage::

    runner = ScenarioRunner(config, on_event=print)
    runner.start("scenarios/node-crash.toml")  # ActionError if one is running
    runner.state()                             # ScenarioRun | None: running, or the last
    runner.stop()   # SIGINT (the injector heals its faults, writes its report), wait up to
                    # STOP_TIMEOUT_S, then SIGKILL
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from shoal.services.runtime.config import ENV_ENDPOINTS, ShoalConfig, dump_toml

from .model import VERDICTS, ActionError, ScenarioRun

REPORTS_DIR = Path("chaos-reports")  # in the console's working directory
# After SIGINT the injector heals every fault it applied, then writes its report: give it
# this long before SIGKILL (then the sim's own fault timers heal what is left).
STOP_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 5.0  # for the reader threads once the process is gone
PROGRESS_CHARS = 300
ERROR_LINES = 5  # an invalid file's errors (one a line) kept for the reason
# The injector's last stdout line: "NAME: VERDICT (reason); report PATH, summary PATH.md".
_FINAL = re.compile(
    r"^.+?: (?P<verdict>[a-z]+) \((?P<reason>.*)\); report (?P<report>.+?), summary "
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def injector_argv(scenario: Path, config_file: Path, report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shoal.services.cli",
        "chaos",
        "run",
        str(scenario),
        "--attach",
        "--config",
        str(config_file),
        "--report",
        str(report),
    ]


def _stop_signal() -> signal.Signals:
    """SIGINT, as the injector expects; SIGTERM (which it treats the same) if the console
    ignores SIGINT, because the injector then inherits that and would not hear it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return signal.SIGTERM
    return signal.SIGINT


class ScenarioRunner:
    """Runs scenario files with the fault injector, one at a time, against ``config``."""

    def __init__(
        self,
        config: ShoalConfig,
        reports_dir: Path = REPORTS_DIR,
        on_event: Callable[[str], None] | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        command: Callable[[Path, Path, Path], list[str]] = injector_argv,
    ) -> None:
        """``on_event`` gets a line when a run starts and when it ends (any thread);
        ``command`` makes the argv from (scenario, config file, report)."""
        self.config = config
        self.reports_dir = reports_dir
        self.on_event = on_event
        self.stop_timeout_s = stop_timeout_s
        self.command = command
        self._lock = threading.Lock()  # start and stop
        self._state_lock = threading.Lock()  # the reader's and the watcher's updates
        self._run: ScenarioRun | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = False
        self._killed = False
        self._tail: deque[str] = deque(maxlen=ERROR_LINES)  # the last stderr lines

    # --- what the feed calls -------------------------------------------------------------

    def state(self) -> ScenarioRun | None:
        """The scenario running now, or the last one that ran (None: none yet)."""
        return self._run

    @property
    def running(self) -> bool:
        run = self._run
        return run is not None and run.running

    def start(self, scenario: str | Path) -> ScenarioRun:
        """Start the injector on ``scenario``; ActionError if one runs or it cannot start."""
        path = Path(scenario)
        with self._lock:
            if self._run is not None and self._run.running:
                raise ActionError(f"{self._run.name} is running: one scenario at a time")
            if not path.is_file():
                raise ActionError(f"no scenario file {path}")
            try:
                self.reports_dir.mkdir(parents=True, exist_ok=True)
                report = self._report_path(path.stem)
                fd, name = tempfile.mkstemp(prefix="shoal-console-", suffix=".toml")
                config_file = Path(name)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(dump_toml(self.config))
            except OSError as err:
                raise ActionError(f"cannot prepare the run: {err}") from None
            try:
                proc = subprocess.Popen(
                    self.command(path, config_file, report),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    encoding="utf-8",
                    errors="replace",
                    env=self._env(),
                    # Its own session: the console's terminal and signals are not its; the
                    # console stops it with stop().
                    start_new_session=True,
                )
            except OSError as err:
                config_file.unlink(missing_ok=True)
                raise ActionError(f"cannot start the fault injector: {err}") from None
            run = ScenarioRun(
                name=path.stem,
                path=str(path),
                started_at=time.time(),
                report=str(report),
                pid=proc.pid,
            )
            self._run, self._proc = run, proc
            self._stopping = self._killed = False
            self._tail = deque(maxlen=ERROR_LINES)
            self._emit(f"{run.name} started (pid {proc.pid}; report {run.report})")
            assert proc.stderr is not None and proc.stdout is not None
            reader = threading.Thread(
                target=self._read_progress,
                args=(proc.stderr,),
                name="shoal-scenario-progress",
                daemon=True,
            )
            watcher = threading.Thread(
                target=self._watch,
                args=(proc, reader, config_file),
                name="shoal-scenario-watch",
                daemon=True,
            )
            self._watcher = watcher
            reader.start()
            watcher.start()
        return run

    def stop(self, timeout_s: float | None = None) -> ScenarioRun | None:
        """Stop a running scenario: SIGINT, wait up to ``timeout_s`` (STOP_TIMEOUT_S) for
        the injector to heal its faults and write its report, SIGKILL if it does not."""
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            proc, watcher = self._proc, self._watcher
            if proc is not None and proc.poll() is None:
                self._stopping = True
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(_stop_signal())
        if proc is None:
            return self._run
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its session: whatever it started too
            proc.wait()
        if watcher is not None:
            watcher.join(JOIN_TIMEOUT_S)
        return self._run

    def wait(self, timeout_s: float) -> ScenarioRun | None:
        """Wait up to ``timeout_s`` for the current run to end; its state either way."""
        watcher = self._watcher
        if watcher is not None:
            watcher.join(timeout_s)
        return self._run

    # --- inside (the reader and watcher threads) -----------------------------------------

    def _report_path(self, stem: str) -> Path:
        base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = self.reports_dir / f"{base}.json"
        n = 2
        while path.exists():
            path = self.reports_dir / f"{base}-{n}.json"
            n += 1
        return path

    def _env(self) -> dict[str, str]:
        # The config file is exactly what the console is attached to: endpoint variables
        # (already in it) must not move the injector elsewhere.
        env = {k: v for k, v in os.environ.items() if k not in ENV_ENDPOINTS}
        env.pop("SHOAL_CONFIG", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _emit(self, text: str) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a broken listener must not stop the run
                self.on_event(text)

    def _update(self, **changes: Any) -> ScenarioRun | None:
        """Swap in a changed copy of the run; a progress line after its end is dropped."""
        with self._state_lock:
            run = self._run
            if run is None or (not run.running and "ended_at" not in changes):
                return run
            run = self._run = dataclasses.replace(run, **changes)
            return run

    def _read_progress(self, stream: IO[str]) -> None:
        tail = self._tail
        with contextlib.suppress(ValueError, OSError):
            for raw in stream:
                line = _ANSI.sub("", raw).replace("\r", "").strip()[:PROGRESS_CHARS]
                if line:
                    tail.append(line)
                    self._update(progress=line)

    def _watch(self, proc: subprocess.Popen[str], reader: threading.Thread, config: Path) -> None:
        last = ""
        assert proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stdout:
                if line.strip():
                    last = line.strip()
        code = proc.wait()
        reader.join(JOIN_TIMEOUT_S)
        config.unlink(missing_ok=True)
        run = self._run
        if run is None:
            return
        verdict, reason = self._outcome(code, last, list(self._tail))
        report = run.report if run.report and Path(run.report).exists() else ""
        run = self._update(
            ended_at=time.time(), exit_code=code, verdict=verdict, reason=reason, report=report
        )
        if run is not None:
            where = f"report {run.report}" if run.report else "no report"
            self._emit(f"{run.name} {verdict} (exit {code}): {reason}; {where}")

    def _outcome(self, code: int, last: str, tail: list[str]) -> tuple[str, str]:
        match = _FINAL.match(last)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            verdict, reason = "killed", f"killed by {name}"
            if self._killed:
                reason = (
                    f"did not stop within {self.stop_timeout_s:g} s, killed"
                    " (the sim's fault timers heal what it left)"
                )
        elif match is not None:
            verdict, reason = match["verdict"], match["reason"]
        else:  # no final line: an invalid file (each error a line), the injector failed
            verdict = VERDICTS.get(code, "error")
            words = tail if verdict == "invalid" else tail[-1:]
            reason = "; ".join(words) or "no output"
        if self._stopping:
            reason = f"stopped by the console: {reason}"
        return verdict, reason
