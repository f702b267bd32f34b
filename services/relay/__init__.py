"""The telemetry relay (``shoal run relay``): binds ingest (ROUTER), bus (PUB) and ctl
(ROUTER); trusts nothing it reads from the network (service.py says how bad input is
counted and refused), and with Curve on a record only from a node key for its node id.

- ``service``: the Relay process; ``dedup``: the per-node sequence window;
- ``view``: a consumer's copy of the relay's last-value cache (snapshot plus bus).
"""

from .service import Relay

__all__ = ["Relay"]
