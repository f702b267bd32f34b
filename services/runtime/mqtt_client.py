"""The paho-mqtt client every shoal service that speaks MQTT makes (the shim, the OTA
service): paho 2's callback API, MQTT 3.1.1 with a clean session, its login, and TLS when
``[mqtt] tls_ca`` is set (the broker's certificate checked against that CA, its host name
too; docs/protocol.md §11). What each does with the client (its loop, will, callbacks) is
its own."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from .config import MqttConfig


def mqtt_client(cfg: MqttConfig, client_id: str, login: tuple[str, str]) -> mqtt.Client:
    """A client that has not connected yet, logging in with ``login`` (user, password)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(*login)
    if cfg.tls_ca:
        client.tls_set(ca_certs=cfg.tls_ca)
    return client
