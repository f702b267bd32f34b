"""Which connection speaks for which node on the delegator's tasks socket (protocol.md §8.1).

A node's route is the connection that last spoke for it; another connection's message for
that node is refused as ``impersonation`` while the route's connection is open and has
spoken within ``fresh_s`` (a node renews every second: silence that long is a dead link).
It learns that a connection closed from the tasks socket's disconnect events, which name
its file descriptor.

Usage (the delegator)::

    conns = Connections(fresh_s=ROUTE_FRESH_S)
    if conns.owns(routes.get(node_id), identity, frame, user, now): routes[node_id] = ...
    conns.closed(fd)            # on EVENT_DISCONNECTED
    conns.user_of(identity)     # the User-Id (public key) it last spoke with
"""

from __future__ import annotations

import zmq

KEPT = 65_536  # connections remembered before the silent ones are forgotten


class Connections:
    def __init__(self, fresh_s: float) -> None:
        self.fresh_s = fresh_s
        self.seen: dict[bytes, float] = {}  # routing id -> its last message (monotonic)
        self.users: dict[bytes, str | None] = {}  # routing id -> the User-Id it spoke with
        self.fds: dict[int, bytes] = {}  # descriptor -> routing id (what a disconnect names)

    def owns(
        self,
        route: tuple[bytes, float] | None,
        identity: bytes,
        frame: zmq.Frame,
        user: str | None,
        now: float,
    ) -> bool:
        """Whether this connection may speak for the node whose route is ``route`` now: it
        is the route, there is none, or the route's connection closed or went silent (it
        takes the node over). Notes this connection's message either way."""
        if identity not in self.seen:
            if len(self.seen) >= KEPT:
                self._forget(now)
            try:
                fd = frame.get(zmq.SRCFD)
            except zmq.ZMQError:  # a transport without descriptors: only silence frees
                fd = -1
            if fd >= 0:
                self.fds[fd] = identity
        self.seen[identity] = now
        self.users[identity] = user
        if route is None or route[0] == identity:
            return True
        owner_seen = self.seen.get(route[0])
        return owner_seen is None or now - owner_seen >= self.fresh_s

    def closed(self, fd: int) -> None:
        identity = self.fds.pop(fd, None)
        if identity is not None:
            self.seen.pop(identity, None)  # its nodes are free to take over
            self.users.pop(identity, None)

    def user_of(self, identity: bytes) -> str | None:
        return self.users.get(identity)

    def _forget(self, now: float) -> None:
        """Connections silent past fresh_s are forgotten (their nodes are free to take over
        anyway); if that is not enough, the oldest half."""
        keep = {i: t for i, t in self.seen.items() if now - t < self.fresh_s}
        if len(keep) >= KEPT // 2:
            keep = dict(sorted(keep.items(), key=lambda kv: kv[1])[len(keep) // 2 :])
        self.seen = keep
        self.users = {i: u for i, u in self.users.items() if i in keep}
        self.fds = {fd: i for fd, i in self.fds.items() if i in keep}

    def __len__(self) -> int:
        return len(self.seen)


__all__ = ["KEPT", "Connections"]
