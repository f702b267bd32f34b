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
from nodecore.node import NodeCore
from transport import MqttTransport

# The node core settings in CONFIG; the rest of CONFIG is for the board.
CORE_KEYS = (
    "ring_capacity",
    "heartbeat_interval_ms",
    "telemetry_interval_ms",
    "ack_timeout_ms",
    "backoff_min_ms",
    "backoff_max_ms",
)
STATUS_EVERY_MS = 10000
TICK_SLEEP_MS = 20  # the core wants a tick every 10-50 ms


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
    return "shoal %s state=%s seq=%d buffered=%d dropped=%d acked=%d mqtt=%s wifi=%s heap=%d" % (
        core.node_id,
        s["state"],
        s["seq"],
        s["buffered"],
        s["dropped"],
        s["acked"],
        "up" if transport.connected() else "down",
        "up" if wlan.isconnected() else "down",
        gc.mem_free(),
    )


def main(cfg=CONFIG):
    wlan = connect_wifi(cfg)
    # After the radio is on: the ESP32's RNG is only truly random with WiFi/BT enabled.
    boot_id = random_u32() or 1  # the protocol needs a non-zero u32
    clock = MonotonicMs()
    now = clock.now()
    hal = Esp32Hal(
        now_ms=now,
        wlan=wlan,
        arrival_rate_hz=cfg["load_arrival_hz"],
        task_cost_ms=cfg["load_task_cost_ms"],
        queue_capacity=cfg["load_queue_capacity"],
    )
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
    settings = {"queue_capacity": cfg["load_queue_capacity"]}
    for key in CORE_KEYS:
        settings[key] = cfg[key]
    core = NodeCore(cfg["node_id"], boot_id, hal, transport, settings, now)
    transport.ack_sink = core.on_ack
    print("shoal: node", cfg["node_id"], "boot", boot_id)

    next_status = now + STATUS_EVERY_MS
    try:
        while True:
            now = clock.now()
            core.tick(now)
            transport.poll()
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
