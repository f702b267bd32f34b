"""The delegator (``shoal run delegator``): binds tasks (ROUTER), bus (PUB) and ctl
(ROUTER); follows the relay's view and the liveness monitor's membership. It trusts its
ledger file and nothing a node says without checking it against the ledger (origin, epoch,
owner), nor from a key that may not speak for that node or a connection that does not own
its route.

- ``service``: the Delegator process; ``ledger``: the durable SQLite task ledger;
- ``placement``: power of two choices among the peers with room;
- ``checkpointer``: the WAL's checkpoints on a thread (measured against SQLite's own by
  bench/ledger.py; the delegator keeps SQLite's, docs/architecture.md says why).
- ``owners``: which connection speaks for which node on the tasks socket.
"""

from .service import Delegator

__all__ = ["Delegator"]
