"""The embedded MQTT broker (``shoal run broker``; ``shoal up`` starts it while ``[mqtt]
embedded`` is true): amqtt 0.12 in its own process, bound to ``[mqtt] listen`` (TCP, MQTT
3.1.1). Boards and the MQTT shim connect to it; it binds nothing else (no ctl socket: a TCP
connect says it is up).

What it trusts: any client that reaches the listener (anonymous, as amqtt's anonymous
plugin admits it; the default listener is loopback only). It does not read payloads: the
shim decodes every one with the protocol's Structs. Where amqtt falls short it is helped
here: a client silent for 1.5 x its keepalive is dropped, so its will fires (amqtt never
does it: issue #308); anonymous sessions keep no offline queue. Deployments use mosquitto
(deploy/mosquitto/mosquitto.conf).

- ``process``: the broker process (config, signals, bind failure, logs);
- ``keepalive``: the activity plugin and the watchdog that enforces keepalives.
"""
