"""The liveness monitor (``shoal run liveness``): binds bus (PUB, membership) and ctl
(ROUTER); connects to the relay's bus and ctl, and to the MQTT shim's bus (its heartbeat
says whether the boards' path is up). It trusts only its own clock: every verdict comes
from when evidence arrived here, never from a node's timestamps.

- ``service``: the Liveness process; ``detector``: the per-node phi-accrual detector;
- ``gateway``: the broker and the shim as observers of the boards behind them;
- ``view``: a consumer's copy of the membership (snapshot plus stream).
"""

from .service import Liveness

__all__ = ["Liveness"]
