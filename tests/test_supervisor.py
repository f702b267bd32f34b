"""The supervisor against real child processes (tiny ``python -c`` scripts).

Each test runs a Supervisor in a background thread, drives it through its ctl socket and
waits on conditions with deadlines; every test stops it and checks that no child is left.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Request
from shoal.services.runtime.config import SupervisorConfig
from shoal.services.runtime.log import JsonLog
from shoal.services.runtime.ports import next_port as free_port
from shoal.services.supervisor.supervisor import ProcessSpec, Supervisor, supervisor_request
from shoal.services.testing import raw_socket, session_keys

PY = sys.executable
SLEEPER = "import time; print('up', flush=True); time.sleep(60)"


class LockedText(io.StringIO):
    """A StringIO written by the supervisor's thread and read by the test's."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            return super().write(s)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


class Harness:
    def __init__(self, sup: Supervisor, ctl: str, out: LockedText, logs: LockedText) -> None:
        self.sup = sup
        self.ctl = ctl
        self.out = out
        self.logs = logs
        self.seen_pids: set[int] = set()

    def req(self, op: str, **args: Any) -> Any:
        return supervisor_request(self.ctl, op, args)

    def ps(self) -> dict[str, dict[str, Any]]:
        rows = {row["name"]: row for row in self.req("ps")}
        self.seen_pids.update(row["pid"] for row in rows.values() if row["pid"])
        return rows

    def events(self, event: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.logs.text().splitlines()]
        return [r for r in records if r["event"] == event]


def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def py(name: str, code: str, **kw: Any) -> ProcessSpec:
    return ProcessSpec(name, [PY, "-c", code], **kw)


@contextmanager
def supervised(specs: list[ProcessSpec], **config: Any) -> Iterator[Harness]:
    ctl = f"tcp://127.0.0.1:{free_port()}"
    values: dict[str, Any] = {
        "restart_backoff_min_s": 0.05,
        "restart_backoff_max_s": 0.4,
        "stable_after_s": 5.0,
        "stop_timeout_s": 1.0,
    }
    values.update(config)
    out, logs = LockedText(), LockedText()
    sup = Supervisor(
        specs, SupervisorConfig(ctl=ctl, **values), out=out, log=JsonLog("supervisor", stream=logs)
    )
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["rc"] = asyncio.run(sup.run(install_signals=False))
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=target, name="supervisor", daemon=True)
    thread.start()
    h = Harness(sup, ctl, out, logs)
    try:
        names = {spec.name for spec in specs}
        wait_until(lambda: names <= {e["name"] for e in h.events("spawned")}, what="spawns")
        h.ps()  # the ctl socket answers too
        yield h
    finally:
        sup.request_stop()
        thread.join(10)
    assert not thread.is_alive(), "supervisor did not stop"
    assert result.get("rc") == 0, result
    spawned = {e["pid"] for e in h.events("spawned")}
    left = [pid for pid in spawned | h.seen_pids if alive(pid)]
    assert not left, f"children left running after stop: {left}"


def test_output_is_prefixed_and_merged() -> None:
    a = (
        "import sys, time\n"
        "print('hello from a')\n"
        "print('oops on stderr', file=sys.stderr)\n"
        "sys.stdout.buffer.write(b'bad \\xff byte\\r\\n'); sys.stdout.flush()\n"
        "print('x' * 200_000)\n"
        "sys.stdout.write('no newline at exit')\n"
    )
    specs = [
        py("a", a, restart=False),
        py("bee", "print('hello from bee'); import time; time.sleep(60)"),
    ]
    with supervised(specs) as h:
        wait_until(lambda: "no newline at exit" in h.out.text(), what="a's last line")
        wait_until(lambda: "hello from bee" in h.out.text(), what="bee's line")
        lines = h.out.text().splitlines()
        assert "a         | hello from a" in lines
        assert "a         | oops on stderr" in lines
        assert "a         | bad \ufffd byte" in lines
        assert "a         | no newline at exit" in lines
        assert "bee       | hello from bee" in lines
        # The huge line comes through whole, in pieces, each one prefixed.
        pieces = [line for line in lines if line.startswith("a         | xxx")]
        assert len(pieces) > 1
        assert sum(len(p) - len("a         | ") for p in pieces) == 200_000
        # restart=False: a stays down.
        wait_until(lambda: h.ps()["a"]["state"] == "stopped", what="a stopped")
        assert h.ps()["a"]["restarts"] == 0
        assert h.ps()["a"]["last_exit"] == 0


def test_crash_restarts_with_doubling_backoff() -> None:
    with supervised([py("crash", "import sys; sys.exit(3)")]) as h:
        wait_until(lambda: h.ps()["crash"]["restarts"] >= 5, what="5 restarts")
        row = h.ps()["crash"]
        assert row["last_exit"] == 3
        assert row["state"] in ("running", "backoff")
        exits = [e for e in h.events("exited") if e["name"] == "crash"]
        assert [e["delay"] for e in exits[:5]] == [0.05, 0.1, 0.2, 0.4, 0.4]
        assert all(e["returncode"] == 3 and e["pid"] for e in exits)
        assert len({e["pid"] for e in exits}) == len(exits)


def test_backoff_resets_after_a_stable_run() -> None:
    code = "import sys, time; time.sleep(0.3); sys.exit(1)"
    with supervised([py("flaky", code)], stable_after_s=0.2) as h:
        wait_until(lambda: len(h.events("exited")) >= 3, what="3 exits")
        assert [e["delay"] for e in h.events("exited")[:3]] == [0.05, 0.05, 0.05]


def test_sigkill_via_ctl_restarts_the_child_with_a_new_pid() -> None:
    # How fast is measured by bench/relay_restart.py; here only that it happens.
    with supervised([py("relay", SLEEPER), py("sim", SLEEPER)]) as h:
        old = h.ps()["relay"]["pid"]
        assert h.req("signal", name="relay", signal="KILL") == {
            "name": "relay",
            "pid": old,
            "signal": "SIGKILL",
        }
        row = wait_until(
            lambda: (r := h.ps()["relay"])["state"] == "running" and r["pid"] != old and r,
            what="relay back",
        )
        assert row["restarts"] == 1
        assert row["last_exit"] == -9
        assert not alive(old)
        assert h.ps()["sim"]["restarts"] == 0


def test_stop_and_cont_pause_without_restart() -> None:
    with supervised([py("sim", SLEEPER)]) as h:
        pid = h.ps()["sim"]["pid"]
        h.req("signal", name="sim", signal="STOP")
        assert h.ps()["sim"]["state"] == "paused"
        wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, what="stopped")
        # Several backoff periods later it is still the same, paused process.
        time.sleep(0.3)
        row = h.ps()["sim"]
        assert (row["state"], row["pid"], row["restarts"]) == ("paused", pid, 0)
        h.req("signal", name="sim", signal="CONT")
        assert h.ps()["sim"]["state"] == "running"
        wait_until(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, what="resumed")
        # Stopping the supervisor while a child is paused still ends it.
        h.req("signal", name="sim", signal="SIGSTOP")


def test_ordered_stop_leaves_no_process() -> None:
    polite = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    print('got TERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    # A child with a grandchild in its process group: both must go.
    parent = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', g.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    specs = [
        py("first", polite),
        py("stubborn", stubborn),
        py("parent", parent),
        py("last", polite),
    ]
    with supervised(specs, stop_timeout_s=0.5) as h:
        wait_until(lambda: h.out.text().count("| ready") == 3, what="handlers installed")
        line = wait_until(
            lambda: [x for x in h.out.text().splitlines() if "grandchild" in x], what="grandchild"
        )
        grandchild = int(line[0].split()[-1])
        assert alive(grandchild)
        h.sup.request_stop()
        wait_until(lambda: h.events("stopped"), what="supervisor stopped")
        assert h.events("stop_timeout")  # the stubborn child was SIGKILLed at the deadline
    # Reverse order: "last" got its SIGTERM before "first".
    terms = [x.split("|")[0].strip() for x in h.out.text().splitlines() if "got TERM" in x]
    assert terms == ["last", "first"]
    assert [e["name"] for e in h.events("stop_timeout")] == ["stubborn"]
    assert not alive(grandchild)


def test_restart_and_stop_ops() -> None:
    with supervised([py("relay", SLEEPER), py("once", SLEEPER, restart=False)]) as h:
        old = h.ps()["once"]["pid"]
        assert h.req("restart", name="once") == {"name": "once", "pid": old}
        row = wait_until(
            lambda: (r := h.ps()["once"])["state"] == "running" and r["pid"] != old and r,
            what="once restarted",
        )
        assert row["restarts"] == 1
        assert not alive(old)
        assert h.req("stop") == {"stopping": True}
        wait_until(lambda: h.events("stopped"), what="stopped via ctl")


def test_ctl_errors_never_crash_it() -> None:
    with supervised([py("relay", SLEEPER)]) as h:
        with pytest.raises(RuntimeError, match="unknown op 'frobnicate'"):
            h.req("frobnicate")
        with pytest.raises(RuntimeError, match="unknown process 'nope'"):
            h.req("signal", name="nope", signal="KILL")
        with pytest.raises(RuntimeError, match="missing argument 'name'"):
            h.req("restart")
        with pytest.raises(RuntimeError, match="unsupported signal 'HUP'"):
            h.req("signal", name="relay", signal="HUP")
        with pytest.raises(RuntimeError, match="missing argument 'signal'"):
            h.req("signal", name="relay")

        dealer = raw_socket(zmq.DEALER, h.ctl)
        try:
            for frames in (
                [b"\x00garbage\xff"],
                [b"", codec.encode(Request(id=7, op="ps"))],  # a REQ-style envelope
                [msgspec.msgpack.encode({"kind": "req", "id": -1, "op": "ps"})],
            ):
                dealer.send_multipart(frames)
                assert dealer.poll(2000), f"no reply to {frames!r}"
                reply = codec.decode_reply(dealer.recv())
                assert not reply.ok and reply.error, frames
        finally:
            dealer.close()
        # Still serving, and the child is untouched.
        row = h.ps()["relay"]
        assert (row["state"], row["restarts"]) == ("running", 0)


def test_signals_in_a_real_process(tmp_path: Path) -> None:
    """SIGINT stops in order; a second SIGINT while stopping kills at once."""
    ctl = f"tcp://127.0.0.1:{free_port()}"
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    script = (
        "import sys\n"
        "from shoal.services.runtime.config import SupervisorConfig\n"
        "from pathlib import Path\n"
        "from shoal.services.runtime.security import Security\n"
        "from shoal.services.supervisor.supervisor import ProcessSpec, run_supervisor\n"
        f"specs = [ProcessSpec('stubborn', [sys.executable, '-c', {stubborn!r}])]\n"
        f"security = Security(keys_dir=Path({str(session_keys())!r}))\n"
        f"config = SupervisorConfig(ctl={ctl!r}, stop_timeout_s=10)\n"
        "sys.exit(run_supervisor(specs, config, security=security))\n"
    )
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([PY, "-c", script], stdout=out, stderr=err)
    try:
        wait_until(lambda: "| ready" in out_path.read_text(), what="child ready")
        pid = supervisor_request(ctl, "ps")[0]["pid"]
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: '"stopping"' in err_path.read_text(), what="stopping")
        assert proc.poll() is None and alive(pid)  # waiting for the stubborn child
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0  # far less than stop_timeout_s: it did not wait for it
        assert '"kill_all"' in err_path.read_text()
        assert not alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# A service that cannot start logs one line saying why (runtime/service.py main_for).
CONFIG_ERROR = (
    "import sys\n"
    'print(\'{"event":"config_error","error":"key relay.ingest: bad"}\', file=sys.stderr)\n'
    "sys.exit(78)\n"
)
BIND_FAILED = (
    "import sys\n"
    'print(\'{"event":"bind_failed","error":"cannot bind tcp://127.0.0.1:1"}\')\n'
    "sys.exit(2)\n"
)


def test_a_config_error_is_not_restarted_and_says_why_once() -> None:
    # The crashing sibling is the clock: five of its restarts span several backoffs.
    specs = [py("relay", CONFIG_ERROR), py("crash", "import sys; sys.exit(3)")]
    with supervised(specs) as h:
        wait_until(lambda: h.ps()["crash"]["restarts"] >= 5, what="5 restarts of crash")
        row = h.ps()["relay"]
        assert (row["state"], row["restarts"], row["last_exit"], row["pid"]) == (
            "failed", 0, 78, None,
        )  # fmt: skip
        assert row["reason"] == "configuration error (exit 78): key relay.ingest: bad"
        assert [e["name"] for e in h.events("spawned")].count("relay") == 1
        failed = h.events("failed")
        assert [(e["name"], e["returncode"]) for e in failed] == [("relay", 78)]
        assert h.ps()["crash"]["reason"] is None
        # An operator who fixed it starts it again.
        h.req("restart", name="relay")
        wait_until(
            lambda: [e["name"] for e in h.events("spawned")].count("relay") == 2,
            what="relay started again",
        )


def test_a_port_that_stays_taken_is_tried_three_times_then_failed() -> None:
    with supervised([py("relay", BIND_FAILED)]) as h:
        row = wait_until(lambda: (r := h.ps()["relay"])["state"] == "failed" and r, what="failed")
        assert (row["restarts"], row["last_exit"]) == (2, 2)
        assert row["reason"] == (
            "could not bind 3 times in a row (exit 2): cannot bind tcp://127.0.0.1:1"
        )
        exits = [e for e in h.events("exited") if e["name"] == "relay"]
        assert [e["delay"] for e in exits] == [0.05, 0.1, None]
        assert len(h.events("failed")) == 1
