"""An indexed fan-out for amqtt: each message is matched against the filters that can match.

amqtt 0.12 routes every published message by walking every topic filter the broker has
(``Broker._run_broadcast``) and formatting a debug line for each one that does not match,
logging off or not. Every board subscribes to its own ``ack`` and ``task/down`` topics, so
with 1,000 boards each message costs ~2,000 filter tests, and measured at 1,000 boards
sending 1 msg/s that walk was half the broker's CPU, which was then saturated (end-to-end
p50 near 400 ms; bench/mqtt_path.py).

``IndexedSubscriptions`` is the broker's filter table (a dict, as amqtt expects) that keeps
its wildcard filters apart; ``IndexedBroker._run_broadcast`` then looks up the topic's exact
filter and tests only the wildcard ones. Delivery is amqtt's own, unchanged: the same
checks in the same order (topic ACL, offline retention, connected sessions) and the same
``mqtt_publish`` per target. What is left out is only the per-filter debug formatting.

This overrides a private method of amqtt; pyproject pins amqtt to 0.12.x, and
tests/test_broker.py checks exact, ``+`` and ``#`` delivery and that the override is the one
in use.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1, QOS_2


def _wild(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class IndexedSubscriptions(dict[str, list[Any]]):
    """amqtt's ``_subscriptions`` (filter -> [(session, qos)]) that also keeps the set of
    wildcard filters current on every insert and delete amqtt does."""

    def __init__(self) -> None:
        super().__init__()
        self.wildcards: set[str] = set()

    def __setitem__(self, key: str, value: list[Any]) -> None:
        super().__setitem__(key, value)
        if _wild(key):
            self.wildcards.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.wildcards.discard(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.wildcards.discard(key)
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self.wildcards.clear()

    def matching(self, broker: Broker, topic: str) -> list[tuple[str, list[Any]]]:
        """The (filter, subscriptions) pairs that match topic, as amqtt's walk finds them."""
        found = []
        exact = None if _wild(topic) else self.get(topic)  # a filter without wildcards
        if exact is not None:
            found.append((topic, exact))
        for topic_filter in self.wildcards:
            if broker._matches(topic, topic_filter):
                found.append((topic_filter, self[topic_filter]))
        return found


class IndexedBroker(Broker):
    """amqtt's Broker with the indexed fan-out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = IndexedSubscriptions()

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        assert isinstance(self._subscriptions, IndexedSubscriptions)
        for _filter, subscriptions in self._subscriptions.matching(self, topic):
            for target_session, sub_qos in list(subscriptions):
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(
                    target_session, topic=topic, action=Action.RECEIVE
                ):
                    continue
                # amqtt's rule: keep QoS 1/2 for a disconnected persistent session.
                if (
                    target_session.transitions.state != "connected"
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if target_session.transitions.state != "connected":
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    running_tasks.append(
                        asyncio.ensure_future(
                            handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                        )
                    )
