"""Settings for one board. Edit, then copy to the board's root as /config.py.

The node core settings (ring_capacity ... backoff_max_ms) are tuned for a board on WiFi:
a shallow ring because RAM is tight (about 480 bytes per buffered message, see
firmware/README.md), and slower heartbeats and a longer backoff than the simulator's
defaults because every publish costs radio time and a fleet of boards shares one broker.
"""

CONFIG = {
    # WiFi
    "wifi_ssid": "YOUR-SSID",
    "wifi_password": "YOUR-WIFI-PASSWORD",
    "wifi_timeout_ms": 15000,  # how long boot waits for WiFi before running anyway
    # MQTT broker (the shim subscribes to it). An IP address avoids a blocking DNS lookup.
    "mqtt_host": "192.168.1.10",
    "mqtt_port": 1883,
    "mqtt_user": None,  # its node id; deploy writes both (shoal's brokers refuse None)
    "mqtt_password": None,
    "mqtt_keepalive_s": 60,
    # Identity: 1-32 chars of a-z, 0-9 and "-", not starting with "-" (protocol section 3.1)
    "node_id": "esp32-01",
    # Node core (firmware/nodecore/node.py DEFAULTS explains each)
    "ring_capacity": 24,
    "heartbeat_interval_ms": 250,  # dead in ~1.4 s (liveness thresholds); ~110 B per beat
    "telemetry_interval_ms": 2000,
    "ack_timeout_ms": 3000,
    "backoff_min_ms": 500,
    "backoff_max_ms": 30000,
    # Local tasks: Poisson arrivals of this rate, each of about this cost, run by the real
    # handlers (nodecore/handlers.py); the queue holds load_queue_capacity of them.
    "load_arrival_hz": 0.5,
    "load_task_cost_ms": 50,
    "load_queue_capacity": 16,
    # Delegation, sized for the heap: an offer of 32 tasks is a 1.7 KB JSON string that a
    # fragmented 110 KB heap could not always find room for (measured: MemoryError).
    "offer_max": 4,
    "result_memory": 8,
    "outstanding_max": 64,
    # Collect when less than this is free, before an allocation fails (gc.threshold).
    "gc_threshold_bytes": 24576,
    # Reconnect (orderly, at an idle moment) for a will with a fresh reserved seq once this
    # many seqs were used since the last: the shim honours a will only within the relay's
    # de-duplication window (256 seqs, about a minute of 250 ms heartbeats). 0: never.
    "will_refresh_seqs": 200,
    # Over-the-air updates (ota.py): a new version confirms itself once its hello was acked
    # and it has run this long; with no ack within ota_probation_max_ms it rolls back.
    "ota_probation_ms": 5000,
    "ota_probation_max_ms": 120000,
    # The status line on the console (state, heap, counters), every this many ms.
    "status_interval_ms": 10000,
}
