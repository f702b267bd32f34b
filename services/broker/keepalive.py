"""Keepalive enforcement for amqtt, which never drops a client whose keepalive expired.

MQTT 3.1.1 (section 3.1.2.10) says a server must close the connection of a client that sent
nothing for 1.5 times its keepalive. amqtt 0.12 notices the silence (its reader times out)
but does nothing about it (issue #308), so a board that loses power stays "connected" until
TCP gives up, minutes later, and its last will, which is what tells shoal the board died,
is late by as much. Two parts fix it without patching amqtt:

- ``ActivityPlugin``, an amqtt plugin (loaded from the broker's config), notes when each
  client last sent a packet (any packet: a PINGREQ counts);
- ``watch``, a task of the broker process, closes the connection of every client silent
  for longer than 1.5 x its keepalive, the way a lost connection is closed: amqtt then
  publishes the client's will.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BasePlugin

# The spec's grace: a client may be silent for 1.5 keepalives.
GRACE = 1.5


class ActivityPlugin(BasePlugin[Any]):
    """Remembers when each client id last sent a packet (the event loop's clock)."""

    @dataclass
    class Config:
        pass

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.last_rx: dict[str, float] = {}

    async def on_mqtt_packet_received(self, *, packet: Any, session: Any = None) -> None:
        if session is not None and session.client_id:
            self.last_rx[session.client_id] = asyncio.get_running_loop().time()

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        self.last_rx[client_id] = asyncio.get_running_loop().time()

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any) -> None:
        self.last_rx.pop(client_id, None)


async def watch(
    broker: Any,
    activity: ActivityPlugin,
    on_drop: Callable[[str, float], None],
    interval_s: float = 0.25,
) -> None:
    """Forever: close the connection of each client silent for > GRACE x its keepalive."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for client_id, (session, handler) in list(broker.sessions.items()):
            keepalive = session.keep_alive or 0
            if keepalive <= 0 or session.transitions.state != "connected":
                continue
            last = activity.last_rx.setdefault(client_id, now)
            silent = now - last
            if silent > GRACE * keepalive and handler is not None:
                activity.last_rx.pop(client_id, None)
                on_drop(client_id, silent)
                # What amqtt does when the socket closes under it: the session ends and,
                # with no DISCONNECT seen, the will is published.
                await handler.handle_connection_closed()
