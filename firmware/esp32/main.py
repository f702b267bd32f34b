"""The board's entry point: WiFi, then the node core talking MQTT to the shim, forever.

Layout on the board: /boot.py, /main.py, /config.py, /clock.py, /hal.py, /transport.py,
/ota.py, /otaboot.py, and the node core as /lib/nodecore (see README.md). boot.py (the OTA
guard, otaboot.py) imports this module and calls main(); run directly (``micropython main.py``), it runs
without the guard. Ctrl-C in a serial console sends a goodbye and stops.
"""

import gc
import sys
import time

from clock import MonotonicMs
from config import CONFIG
from hal import Esp32Hal, mem_free, random_u32
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
STATUS_EVERY_MS = 10000  # the status line's period (config status_interval_ms)
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


class Board:
    """One board's node, wired as main() runs it: the hal (measured CPU, free heap, RSSI),
    the MQTT transport, the task engine with the real handlers, delegation over the task
    topics, and the node core."""

    def __init__(self, cfg, boot_id, wlan, clock, client_cls=None):
        self.cfg = cfg
        self.wlan = wlan
        self.clock = clock
        now = clock.now()
        # No simulated load: the task engine's queue is the board's, its CPU is measured.
        self.hal = hal = Esp32Hal(now_ms=now, wlan=wlan, arrival_rate_hz=None)
        self.transport = transport = MqttTransport(
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
            client_cls=client_cls,
            will_refresh=cfg.get("will_refresh_seqs", 200),
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
        self.engine = Engine(cfg["node_id"], boot_id, hal.rand, settings, now)
        self.delegation = Delegation(self.engine, TaskLink(transport), settings, now)
        self.core = core = NodeCore(
            cfg["node_id"], boot_id, hal, transport, settings, now, delegation=self.delegation
        )
        transport.ack_sink = core.on_ack
        transport.task_sink = core.on_task_message
        transport.rebirth = core.hello
        transport.reserve_seq = core.reserve_seq
        transport.idle = core.idle
        # The OTA client (ota.py, ~8 KB of heap) is loaded only when an update is under way:
        # a message from the OTA service, or a transfer or a new version's probation that
        # a reset interrupted (its files on flash).
        self.ota = None
        self._acked = lambda: core.stats["acked"]
        transport.ota_sink = self._ota_message
        transport.on_connect = self._ota_connect
        if _exists("ota_pending.json") or _exists("ota_plan.json"):
            self._load_ota()
        self.status_every_ms = cfg.get("status_interval_ms", STATUS_EVERY_MS)
        self.next_status_ms = now + self.status_every_ms
        self.heap_min = None  # the least free heap seen after a pass, since boot

    def _load_ota(self):
        from ota import OtaClient

        cfg = self.cfg
        self.ota = OtaClient(
            cfg["node_id"],
            FIRMWARE_VERSION,
            self.transport.publish_raw,
            self.clock.now,
            acked=self._acked,
            probation_ms=cfg.get("ota_probation_ms", 5000),
            probation_max_ms=cfg.get("ota_probation_max_ms", 120000),
            before_reset=self._before_reset,
        )
        return self.ota

    def _before_reset(self):
        """An update's reset is planned: a goodbye, so the cluster sees the board leave and
        come back with its new boot, not a failure."""
        self.core.goodbye(self.clock.now(), "update")
        self.transport.poll()
        self.transport.close()

    def _ota_message(self, payload):
        (self.ota or self._load_ota()).on_message(payload)

    def _ota_connect(self):
        if self.ota is not None:
            self.ota.on_connect()

    def step(self):
        """One pass of the main loop: the node core, then the MQTT client. Its time goes to
        the measured CPU (cpu_pct). Returns the clock's now."""
        t0 = time.ticks_us()
        now = self.clock.now()
        self.core.tick(now)
        self.transport.poll()
        if self.ota is not None:
            self.ota.tick(now)
        self.hal.busy(time.ticks_diff(time.ticks_us(), t0))
        free = mem_free()
        if free is not None and (self.heap_min is None or free < self.heap_min):
            self.heap_min = free
        return now

    def status_due(self, now):
        if now < self.next_status_ms:
            return False
        self.next_status_ms = now + self.status_every_ms
        return True

    def status_line(self):
        s = self.core.snapshot()
        t = s.get("tasks", {})
        ts = self.transport.stats
        return (
            "shoal %s state=%s seq=%d buffered=%d dropped=%d acked=%d mqtt=%s wifi=%s heap=%d"
            " tasks=%d/%d in=%d out=%d heap_min=%d connects=%d will_refreshes=%d"
            " rebirths=%d bad_tasks=%d bad_task_msgs=%d bad_states=%d bad_acks=%d"
            " fw=%s ota=%s ota_bytes=%d ota_bad_chunks=%d"
        ) % (
            self.core.node_id,
            s["state"],
            s["seq"],
            s["buffered"],
            s["dropped"],
            s["acked"],
            "up" if self.transport.connected() else "down",
            "up" if self.wlan.isconnected() else "down",
            _int(mem_free()),
            t.get("done_local", 0),
            t.get("created", 0),
            t.get("delegated_in", 0),
            t.get("taken", 0),
            _int(self.heap_min),
            ts["connects"],
            ts["will_refreshes"],
            ts["rebirths"],
            ts["bad_tasks"],
            self.delegation.stats["bad_msgs"],
            ts["bad_states"],
            ts["bad_acks"],
            FIRMWARE_VERSION,
            self.ota.state if self.ota else "-",
            self.ota.stats["bytes"] if self.ota else 0,
            self.ota.stats["bad_chunks"] if self.ota else 0,
        )

    def stop(self):
        """A goodbye, sent at once if the link is up, then an orderly DISCONNECT."""
        self.core.goodbye(self.clock.now(), "shutdown")
        self.transport.poll()
        self.transport.close()


def _exists(path):
    try:
        import os

        os.stat(path)
        return True
    except (ImportError, AttributeError, OSError):
        return False


def _int(x):
    return -1 if x is None else x


def main(cfg=CONFIG):
    gc.collect()
    free = mem_free()
    if free is not None:  # (None: CPython, in tests)
        # Collect early (once this much more is allocated), rather than when an allocation
        # fails: a fragmented heap fails on a large string long before it is full.
        gc.threshold(max(4096, free - cfg.get("gc_threshold_bytes", 24576)))
    wlan = connect_wifi(cfg)
    # After the radio is on: the ESP32's RNG is only truly random with WiFi/BT enabled.
    boot_id = random_u32() or 1  # the protocol needs a non-zero u32
    board = Board(cfg, boot_id, wlan, MonotonicMs())
    print("shoal: node", cfg["node_id"], "boot", boot_id)
    try:
        while True:
            now = board.step()
            if board.status_due(now):
                print(board.status_line())
                if not wlan.isconnected():
                    try:  # the driver may have given up; ask again every status period
                        wlan.connect(cfg["wifi_ssid"], cfg["wifi_password"])
                    except OSError:
                        pass  # already connecting
            time.sleep_ms(TICK_SLEEP_MS)
    except KeyboardInterrupt:
        board.stop()
        print("shoal: stopped;", board.status_line())
    except Exception as e:  # a board must not hang on a bug: reboot instead
        sys.print_exception(e)
        print("shoal: resetting in 5 s")
        time.sleep(5)
        import machine

        machine.reset()  # a new boot_id; the relay sees a reboot and a new hello


# Not when boot.py imported this module and runs main() itself: on a board the port runs
# main.py after boot.py returns (after Ctrl-C), which must not start the node again.
if __name__ == "__main__" and "main" not in sys.modules:
    main()
