"""The device registry (``shoal run registry``, under ``shoal up``): binds ctl (ROUTER:
ping, status, devices) and bus (PUB: its heartbeat); follows the relay's bus and snapshot
(RelayView). It trusts the relay's records (already validated, de-duplicated) and its
registry file, nothing else; only boards (nodes whose hello came ``via`` mqtt) are entered.

- ``store``: the SQLite registry (devices, ota_history), also used by ``shoal devices`` and
  ``shoal firmware deploy``;
- ``service``: the process that keeps firmware and last seen current, in batches.
"""
