"""Who may connect to the embedded broker and what each client may do (docs/protocol.md
§11, "Credentials and ACL"), as amqtt plugins, with every refusal counted by reason.

- ``PasswordPlugin``: amqtt's password-file plugin (``FileAuthPlugin``) reading the
  password file of services/broker/credentials.py (mosquitto's ``$7$`` hashes, so one file
  serves both brokers), read again when it changes (a board added while the broker runs can
  log in at once). No username: refused, unless ``[mqtt] allow_anonymous``. amqtt's own
  anonymous plugin is not loaded: it admits any client that sends a username.
  A board (username = its node id) must also use its node id as its client id (amqtt hands
  a client id's session, subscriptions included, to whoever connects with it) and may set
  a will only on its own topics (amqtt publishes a will without any ACL check).
- ``AclPlugin``: a board publishes only under ``shoal/v1/<own id>/`` and subscribes only to
  filters inside it or to ``shoal/v1/shim/+/state``; a service (``svc.<name>``) has all of
  ``shoal/v1/#``. amqtt's static ACL plugin cannot say "own id". A denied publish is dropped
  (MQTT 3.1.1 has no way to say so), a denied subscription gets SUBACK 0x80.
- ``AuthFirst``: a broker mixin that authenticates a CONNECT before amqtt touches the
  sessions (amqtt 0.12 first deletes the old session of a clean-session client id, so a
  refused login could still cut a board off its subscriptions).

Counters (``REFUSALS``): ``refused_<reason>`` for connections, ``denied_publish`` and
``denied_subscribe`` for ACL refusals; the broker's status (``shoal status``) shows them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.utils import format_client_message, gen_client_id

from .credentials import ROOT, is_board, is_service, verify_password

SHIM_STATE = ROOT + "shim/+/state"
CONNECT_REFUSALS = ("anonymous", "unknown_user", "bad_password", "client_id", "will")
REFUSALS = (*(f"refused_{r}" for r in CONNECT_REFUSALS), "denied_publish", "denied_subscribe")


def new_counters() -> dict[str, int]:
    """Every refusal counter at 0: the keys never change, so another thread may copy the
    dict while the broker's loop counts."""
    return dict.fromkeys(REFUSALS, 0)


def board_may_publish(user: str, topic: str) -> bool:
    return topic.startswith(f"{ROOT}{user}/")


def board_may_subscribe(user: str, topic_filter: str) -> bool:
    """Inside the board's own root (no wildcard before it), or the shims' state."""
    own = f"{ROOT}{user}/"
    if topic_filter.startswith(own):
        return True
    levels = topic_filter.split("/")
    return (
        len(levels) == 5 and levels[:3] == ["shoal", "v1", "shim"] and levels[4] == "state"
    ) and "#" not in levels[3]


def allowed(user: str | None, topic: str, action: Action, anonymous_ok: bool) -> bool | None:
    """The ACL: True, False, or None for a kind of user it does not know (refused)."""
    if user is None or user == "":
        return anonymous_ok
    if is_service(user):
        return topic.startswith(ROOT)
    if not is_board(user):
        return None
    if action == Action.PUBLISH:
        return board_may_publish(user, topic)
    if action == Action.SUBSCRIBE:
        return board_may_subscribe(user, topic)
    return True  # RECEIVE (AuthFirst skips it): what a board may subscribe to it may receive


class PasswordPlugin(FileAuthPlugin):
    """amqtt's password-file plugin with shoal's hash, reload, refusal counts and the
    board rules (client id, will topic)."""

    @dataclass
    class Config:
        password_file: str | Path | None = None
        allow_anonymous: bool = False

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.counters = new_counters()  # the broker process reads them (get_plugin)
        self.allow_anonymous = bool(self._get_config_option("allow_anonymous", False))
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(str(self._get_config_option("password-file")))
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            self._users: dict[str, str] = {}
            self._read_password_file()

    def _refuse(self, reason: str, session: Any) -> bool:
        self.counters[f"refused_{reason}"] += 1
        self.context.logger.warning(
            f"refused {reason}: client {session.client_id!r} user {session.username!r}"
        )
        return False

    async def authenticate(self, *, session: Any) -> bool | None:
        user = session.username
        if not user:
            if self.allow_anonymous:
                session.is_anonymous = True  # amqtt keeps no offline queue for it
                return True
            return self._refuse("anonymous", session)
        self._reload_if_changed()
        hashed = self._users.get(user)
        if hashed is None or not (is_board(user) or is_service(user)):
            return self._refuse("unknown_user", session)
        if not verify_password(session.password or "", hashed):
            return self._refuse("bad_password", session)
        if is_board(user):
            if session.client_id != user:
                return self._refuse("client_id", session)
            if session.will_flag and not board_may_publish(user, session.will_topic or ""):
                return self._refuse("will", session)
        # No offline queues for anyone (nothing in shoal needs a persistent session).
        session.is_anonymous = True
        return True


class AclPlugin(BaseTopicPlugin):
    """The own-id ACL (``allowed``), with denials counted."""

    @dataclass
    class Config:
        allow_anonymous: bool = False

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.counters = new_counters()  # the broker process reads them (get_plugin)
        self.allow_anonymous = bool(self._get_config_option("allow_anonymous", False))

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        user = session.username if session is not None else None
        ok = bool(action is not None and allowed(user, topic or "", action, self.allow_anonymous))
        if not ok and action in (Action.PUBLISH, Action.SUBSCRIBE):
            what = "publish" if action == Action.PUBLISH else "subscribe"
            self.counters[f"denied_{what}"] += 1
            self.context.logger.warning(f"denied {what}: user {user!r} topic {topic!r}")
        return ok


class AuthFirst:
    """A Broker mixin: amqtt's ``_initialize_client_session`` with the login checked first."""

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Any]:
        broker: Any = self
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, broker.plugins_manager
            )
        except AMQTTError as exc:
            where = format_client_message(address=remote_address, port=remote_port)
            broker.logger.warning(f"[MQTT-3.1.0-1] {where}: Can't read first packet as CONNECT")
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        # Here amqtt would already drop the client id's old session: refuse first.
        if not await broker._authenticate(session, None):
            session.parent = 0
            handler.attach(session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            raise AMQTTError(f"login refused ({session.client_id!r})")
        session.shoal_authenticated = True
        # From here on, amqtt's own steps (broker.py, _initialize_client_session).
        if session.clean_session:
            if session.client_id:
                await broker._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in broker._sessions:
            existing, _ = broker._sessions[session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive"):
                setattr(existing, name, getattr(session, name))
            existing.username, existing.password = session.username, session.password
            existing.is_anonymous = session.is_anonymous
            existing.shoal_authenticated = True
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        delay = broker.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        if action == Action.RECEIVE:
            # Checked at SUBSCRIBE already: a delivery (every message, every subscriber)
            # goes without a plugin call.
            return True
        result: bool = await super()._topic_filtering(session, topic, action)  # type: ignore[misc]
        return result

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        if getattr(session, "shoal_authenticated", False):
            return True  # checked (and counted) once, in _initialize_client_session
        result: bool = await super()._authenticate(session, listener)  # type: ignore[misc]
        return result
