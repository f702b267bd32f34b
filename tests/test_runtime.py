"""The service runtime: timers, heartbeat, control, surviving handler bugs, ordered stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import zmq

from shoal.protocol.messages import ServiceBeat, ServiceStatus
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.runtime.service import Service
from shoal.services.testing import BusListener, config_on_free_ports, running, tcp, wait_for


class Ticker(Service):
    """A service with a bus, a timer, and a handler that fails on purpose."""

    name = "ticker"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ticks = 0
        self.stopped_in_order: list[str] = []
        self.ctl_ops["boom"] = self._boom

    def setup(self) -> None:
        self.bus = self.bind("bus", zmq.PUB, self.bus_endpoint)
        self.serve_ctl(self.ctl_endpoint)
        self.every(0.01, self._tick)
        self.every(0.01, self._broken)

    def _tick(self) -> None:
        self.ticks += 1

    def _broken(self) -> None:
        raise RuntimeError("a bug in a timer")

    def _boom(self, _args: dict[str, Any]) -> None:
        raise ValueError("a bug in an op")

    def on_stop(self) -> None:
        self.stopped_in_order.append("on_stop")


def make_ticker() -> Ticker:
    config = config_on_free_ports(runtime={"heartbeat_interval_ms": 20})
    ticker = Ticker(config)
    ticker.bus_endpoint = tcp()  # type: ignore[attr-defined]
    ticker.ctl_endpoint = tcp()  # type: ignore[attr-defined]
    return ticker


def test_timers_run_and_a_failing_handler_is_counted_not_fatal() -> None:
    with running(make_ticker()) as ticker:
        wait_for(
            lambda: ticker.ticks >= 10 and ticker.counters["handler_errors"] >= 10, timeout_s=5
        )
    assert ticker.stopped_in_order == ["on_stop"]


def beats(bus: BusListener) -> list[ServiceBeat]:
    bus.pump()
    return [f for f in bus.frames if isinstance(f, ServiceBeat)]


def test_heartbeat_is_published_numbered_with_counters() -> None:
    ticker = make_ticker()
    bus = BusListener(ticker.bus_endpoint)  # type: ignore[attr-defined]
    try:
        with running(ticker):
            wait_for(lambda: len(beats(bus)) >= 3, 5)
        seen = beats(bus)
        assert all(b.service == "ticker" and b.pub == ticker.pub_id for b in seen)
        pseqs = [b.pseq for b in seen]
        assert pseqs == list(range(pseqs[0], pseqs[0] + len(pseqs)))
        assert "handler_errors" in seen[-1].counters
    finally:
        bus.close()


def test_a_failing_op_answers_with_an_error_and_the_service_keeps_serving() -> None:
    with running(make_ticker()) as ticker, CtlClient(ticker.ctl_endpoint) as ctl:  # type: ignore[attr-defined]
        with pytest.raises(CtlFailed, match="a bug in an op"):
            ctl.call("boom")
        status = ctl.call("status", result_type=ServiceStatus)
        assert status.service == "ticker" and status.endpoints["bus"].startswith("tcp://")
        assert status.counters["handler_errors"] >= 1


def test_sigterm_stops_a_service_process_in_order_with_json_logs(tmp_path: Any) -> None:
    config_path = tmp_path / "shoal.toml"
    from shoal.services.runtime.config import dump_toml

    config = config_on_free_ports()
    config_path.write_text(dump_toml(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.services.cli", "run", "relay", "--config", str(config_path)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with CtlClient(config.relay.ctl) as ctl:
            wait_for(
                lambda: proc.poll() is not None or ctl.call("ping", timeout_s=0.3, retries=0),
                20,
                ignore=(CtlUnavailable,),
            )
        assert proc.poll() is None, "relay exited early"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    events = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "stopped"
    assert "stopping" in names and all(e["svc"] == "relay" for e in events)


def test_humanize_renders_a_json_log_line_for_a_terminal() -> None:
    from shoal.services.runtime.log import humanize

    line = '{"ts":"2026-11-23T23:59:01.123Z","svc":"relay","level":"info","event":"started","pid":7,"endpoints":{"a":"b"}}'
    assert humanize(line) == '23:59:01.123 info  started pid=7 endpoints={"a":"b"}'
    assert humanize("plain text") == "plain text"
    assert humanize("{not json") == "{not json"


def test_heartbeat_reports_how_late_the_loop_ran() -> None:
    ticker = make_ticker()
    bus = BusListener(ticker.bus_endpoint)  # type: ignore[attr-defined]
    try:
        with running(ticker):
            wait_for(lambda: beats(bus), 5)
            ticker.after(0, lambda: time.sleep(0.3))  # a handler that stalls the loop
            wait_for(lambda: any(b.loop_lag_ms >= 250 for b in beats(bus)), 5)
    finally:
        bus.close()
