"""The board's entry point: WiFi, then the node core talking MQTT to the shim, forever.

Layout on the board: /main.py, /config.py, /clock.py, /hal.py, /transport.py, and the node
core as /lib/nodecore (see README.md). Ctrl-C in a serial console sends a goodbye and stops.
"""

import gc
import sys
import time

from clock import MonotonicMs
from config import CONFIG
from hal import Esp32Hal, random_u32
from nodecore.delegation import Delegation
from nodecore.engine import Engine
from nodecore.node import NodeCore
from transport import MqttTransport

FIRMWARE_VERSION = "shoal-esp32/0.2"

# The node core settings in CONFIG; the rest of CONFIG is for the board.
CORE_KEYS = (
    "ring_capacity",
    "heartbeat_interval_ms",
    "telemetry_interval_ms",
    "ack_timeout_ms",
    "backoff_min_ms",
    "backoff_max_ms",
)
# Delegation settings in CONFIG (nodecore/delegation.py DEFAULTS explains each).
DELEGATION_KEYS = ("offer_max", "result_memory", "outstanding_max")
STATUS_EVERY_MS = 10000
TICK_SLEEP_MS = 20  # the core wants a tick every 10-50 ms


class TaskLink:
    """Delegation's link: task messages over the transport's task topics."""

    def __init__(self, transport):
        self.transport = transport

    def send(self, msg):
        return self.transport.send_task(msg)


def connect_wifi(cfg):
    """Start joining WiFi and wait at most wifi_timeout_ms. Without WiFi the node still
    runs: it buffers telemetry and the transport connects once the link is there."""
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(cfg["wifi_ssid"], cfg["wifi_password"])
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > cfg["wifi_timeout_ms"]:
                print("wifi: not connected yet, running anyway")
                break
            time.sleep_ms(100)
    if wlan.isconnected():
        print("wifi:", wlan.ifconfig()[0])
    return wlan


def status_line(core, transport, wlan):
    s = core.snapshot()
    t = s.get("tasks", {})
    return (
        "shoal %s state=%s seq=%d buffered=%d dropped=%d acked=%d mqtt=%s wifi=%s heap=%d"
        " tasks=%d/%d in=%d out=%d"
    ) % (
        core.node_id,
        s["state"],
        s["seq"],
        s["buffered"],
        s["dropped"],
        s["acked"],
        "up" if transport.connected() else "down",
        "up" if wlan.isconnected() else "down",
        gc.mem_free(),
        t.get("done_local", 0),
        t.get("created", 0),
        t.get("delegated_in", 0),
        t.get("taken", 0),
    )


def main(cfg=CONFIG):
    gc.collect()
    # Collect early (once this much more is allocated), rather than when an allocation
    # fails: a fragmented heap fails on a large string long before it is full.
    gc.threshold(max(4096, gc.mem_free() - cfg.get("gc_threshold_bytes", 24576)))
    wlan = connect_wifi(cfg)
    # After the radio is on: the ESP32's RNG is only truly random with WiFi/BT enabled.
    boot_id = random_u32() or 1  # the protocol needs a non-zero u32
    clock = MonotonicMs()
    now = clock.now()
    # No simulated load: the task engine's queue is the board's, its CPU is measured.
    hal = Esp32Hal(now_ms=now, wlan=wlan, arrival_rate_hz=None)
    transport = MqttTransport(
        cfg["node_id"],
        boot_id,
        cfg["mqtt_host"],
        port=cfg["mqtt_port"],
        user=cfg["mqtt_user"],
        password=cfg["mqtt_password"],
        keepalive_s=cfg["mqtt_keepalive_s"],
        min_reconnect_ms=cfg["backoff_min_ms"],
        now_ms=clock.now,
        link_up=wlan.isconnected,
    )
    settings = {
        "queue_capacity": cfg["load_queue_capacity"],
        "rate_hz": cfg["load_arrival_hz"],  # local tasks (Poisson), run by real handlers
        "task_cost_ms": cfg["load_task_cost_ms"],
        "fw": FIRMWARE_VERSION,
    }
    for key in CORE_KEYS + DELEGATION_KEYS:
        if key in cfg:
            settings[key] = cfg[key]
    engine = Engine(cfg["node_id"], boot_id, hal.rand, settings, now)
    delegation = Delegation(engine, TaskLink(transport), settings, now)
    core = NodeCore(cfg["node_id"], boot_id, hal, transport, settings, now, delegation=delegation)
    transport.ack_sink = core.on_ack
    transport.task_sink = core.on_task_message
    transport.rebirth = core.hello
    transport.reserve_seq = core.reserve_seq
    print("shoal: node", cfg["node_id"], "boot", boot_id)

    next_status = now + STATUS_EVERY_MS
    try:
        while True:
            t0 = time.ticks_us()
            now = clock.now()
            core.tick(now)
            transport.poll()
            hal.busy(time.ticks_diff(time.ticks_us(), t0))
            if now >= next_status:
                print(status_line(core, transport, wlan))
                next_status = now + STATUS_EVERY_MS
                if not wlan.isconnected():
                    try:  # the driver may have given up; ask again every status period
                        wlan.connect(cfg["wifi_ssid"], cfg["wifi_password"])
                    except OSError:
                        pass  # already connecting
            time.sleep_ms(TICK_SLEEP_MS)
    except KeyboardInterrupt:
        core.goodbye(clock.now(), "shutdown")  # sent at once if the link is up
        transport.poll()
        transport.close()
        print("shoal: stopped;", status_line(core, transport, wlan))
    except Exception as e:  # a board must not hang on a bug: reboot instead
        sys.print_exception(e)
        print("shoal: resetting in 5 s")
        time.sleep(5)
        import machine

        machine.reset()  # a new boot_id; the relay sees a reboot and a new hello


if __name__ == "__main__":
    main()
