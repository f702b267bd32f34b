"""The simulated fleet (``shoal sim``, ``shoal run sim``): binds ctl (ROUTER); connects one
DEALER to each relay shard's ingest (a gateway for all its nodes, each node's records to
its shard) and one to the delegator's
tasks. Its nodes run the firmware's node core unchanged. It trusts what the relay and the
delegator send only after decoding it with the protocol's types; a bad frame is counted.

- ``fleet``: the Fleet process and its ctl ops; ``node``: one simulated node;
- ``workload``: who gets how many tasks, and when; ``faults``: the fault op's arguments and
  the faulty links and clocks; ``links``: the gateway and task connections as a node sees them.
"""

from .fleet import Fleet

__all__ = ["Fleet"]
