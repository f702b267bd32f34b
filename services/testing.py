"""Helpers for tests and benchmarks: free ports, services in-process, waiting on conditions.

Usage::

    config = config_on_free_ports()
    with running(Relay(config)) as relay:
        wait_for(lambda: relay.counters["accepted"] > 0, timeout_s=5)
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec

from .config import ShoalConfig, load_config
from .runtime import Service

S = TypeVar("S", bound=Service)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp(port: int | None = None) -> str:
    return f"tcp://127.0.0.1:{port or free_port()}"


def config_on_free_ports(base: ShoalConfig | None = None, **sections: dict[str, Any]) -> ShoalConfig:
    """A config whose every endpoint is a free loopback port; extra keys per section."""
    config = base or load_config(env={})
    endpoints = {
        "relay": {"ingest": tcp(), "bus": tcp(), "ctl": tcp()},
        "supervisor": {"ctl": tcp()},
    }
    for name, values in endpoints.items():
        values.update(sections.pop(name, {}))
        config = msgspec.structs.replace(
            config, **{name: msgspec.structs.replace(getattr(config, name), **values)}
        )
    for name, values in sections.items():
        config = msgspec.structs.replace(
            config, **{name: msgspec.structs.replace(getattr(config, name), **values)}
        )
    return config


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02) -> Any:
    """Poll condition until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {condition}")
        time.sleep(interval_s)


@contextlib.contextmanager
def running(service: S, timeout_s: float = 10.0) -> Iterator[S]:
    """Run a service in a thread for the duration of the block; always stop and join it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run(install_signals=False)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=target, name=f"svc-{service.name}", daemon=True)
    thread.start()
    try:
        if not service.wait_ready(timeout_s):
            raise AssertionError(f"{service.name} did not start: {errors}")
        yield service
    finally:
        service.stop()
        thread.join(timeout_s)
        if thread.is_alive():
            raise AssertionError(f"{service.name} did not stop within {timeout_s}s")
    if errors:
        raise errors[0]
