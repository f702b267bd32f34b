"""The embedded MQTT broker (``shoal run broker``; ``shoal up`` starts it while ``[mqtt]
embedded`` is true): amqtt 0.12 in its own process, bound to ``[mqtt] listen`` (TCP, MQTT
3.1.1), and ``[mqtt] broker_ctl`` (ROUTER: ping, status with its refusal counters) with
``[metrics] broker``. Boards and the MQTT shim connect to it; a TCP connect says it is up.

What it trusts: the password file in ``[mqtt] credentials`` (hashes; shoal's tools write
it), nothing a client says. Every client logs in (anonymous off unless ``[mqtt]
allow_anonymous``); a board, logged in as its node id, publishes and subscribes only under
its own topics; every refusal is counted by reason (``access``; docs/protocol.md §11.10).
It does not read payloads: the shim decodes every one with the protocol's Structs. Where
amqtt falls short it is helped here: a client silent for 1.5 x its keepalive is dropped, so
its will fires (amqtt never does it: issue #308); no session keeps an offline queue; a
login is checked before amqtt touches any session. Deployments use mosquitto
(deploy/mosquitto/mosquitto.conf, with ``shoal devices export-mosquitto``).

- ``process``: the broker process (config, signals, bind failure, logs);
- ``keepalive``: the activity plugin and the watchdog that enforces keepalives;
- ``credentials``: the logins (password file, ACL, secrets), for mosquitto too;
- ``access``: the password and ACL plugins, the login-first session start;
- ``status``: the status service (ctl, metrics) in a thread of the broker process.
"""
