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
    "mqtt_user": None,  # None: connect without credentials
    "mqtt_password": None,
    "mqtt_keepalive_s": 60,
    # Identity: 1-32 chars of a-z, 0-9 and "-", not starting with "-" (protocol section 3.1)
    "node_id": "esp32-01",
    # Node core (firmware/nodecore/node.py DEFAULTS explains each)
    "ring_capacity": 24,
    "heartbeat_interval_ms": 1000,
    "telemetry_interval_ms": 2000,
    "ack_timeout_ms": 3000,
    "backoff_min_ms": 500,
    "backoff_max_ms": 30000,
    # Simulated task load until a real task queue reports its depth
    "load_arrival_hz": 0.5,
    "load_task_cost_ms": 50,
    "load_queue_capacity": 16,
}
