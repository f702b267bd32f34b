"""What every shoal service shares, and nothing a single process owns.

- ``service``: the Service base class (sockets, timers, heartbeats, ctl ops, ordered stop);
- ``sockets``: binding and connecting ZeroMQ sockets with the protocol's limits;
- ``config``: the TOML configuration as msgspec Structs (a wrong key is an error at start);
- ``log``: JSON log lines and per-interval summaries;
- ``ctl_client``: a DEALER client for any service's ctl socket (timeouts, retries);
- ``subscriber``: a bus subscriber that numbers frames and counts gaps;
- ``clone``: a state kept in sync by snapshot plus stream (the zguide's Clone pattern);
- ``ports``: free loopback ports for test and scenario clusters, never handed out twice;
- ``keys``: the keys directory (CurveZMQ certificates with roles; ``shoal keys``);
- ``security``: Curve on every socket, the ZAP allowlist, each message's key checked;
- ``roles``: every control op classified (read, operate), what each role may do.

Imports go one way: cli -> the process packages -> runtime -> protocol.
"""
