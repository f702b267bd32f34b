"""The MQTT shim (``shoal run shim``): boards over MQTT to the relay and the delegator.

It binds ctl (ROUTER: ping, status, boards) and bus (PUB: its heartbeat with counters).
Connects to the MQTT broker (``[mqtt] broker``, paho-mqtt, polled by the service loop),
logging in as ``svc.shim`` (services/broker/credentials.py; or ``[mqtt] username``), over
TLS when ``[mqtt] tls_ca`` is set; one DEALER to the relay's ingest (a gateway for every board: batches out, acks back, routed
per board) and one DEALER to the delegator's tasks socket.

It trusts nothing a board sends: every payload is decoded with the protocol's Structs and
limits, and a topic's node id must match the payload's (``impersonation`` otherwise); a
will counts only for the boot the shim saw last. What the relay and the delegator send is
decoded with the protocol's types before it is routed.

- ``service``: the Shim process (dispatch, counters, ctl ops); ``link``: the MQTT client;
- ``topics``: topic names and the shim's own payloads; ``boards``: the boards it speaks for;
- ``ingest``: batches to the relay, acks back; ``tasks``: task messages both ways.
"""

from .service import Shim

__all__ = ["Shim"]
