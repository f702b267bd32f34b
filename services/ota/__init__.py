"""The OTA service (``shoal run ota``, under ``shoal up``): over-the-air updates of the
boards over MQTT (firmware/esp32/ota.py is the board's half; docs/protocol.md section 13).

It binds ctl (ROUTER: ping, status, rollout, progress, abort) and bus (PUB: its heartbeat
with counters); connects to the MQTT broker (paho, its own network thread; over TLS when
``[mqtt] tls_ca`` is set, as the shim; subscribes to ``shoal/v1/+/ota/up``) and to the
liveness monitor (membership, the rollout's gate).

It trusts the bundles it is given only once they match their manifests, and nothing a
board sends: each payload is decoded with Structs and limits, its node id must be its
topic's, a request for a chunk that is no part of a bundle is counted and dropped.

- ``wire``: the payloads; ``bundles``: the versions it can send; ``rollout``: board by
  board, the gate, the halt; ``service``: the process.
"""
