"""CurveZMQ for every socket (sockets.py applies it), and who may do what (roles.py).

What a process presents:

- a socket it **binds** is a Curve server with the cluster's server key, and its context
  runs a ZAP authenticator (pyzmq's ``zmq.auth``) that lets in only the keys of the
  allowlist (keys.py), and of those only the roles the socket admits: ``node`` keys on
  ingest and tasks, ``reader``, ``service`` and ``operator`` keys on buses and control
  sockets. A refused handshake is counted (``auth_refused_key``: not in the allowlist;
  ``auth_refused_role``: the wrong role for that socket);
- a socket it **connects** is a Curve client with its own key (a service's is its name,
  a command's its role: ``console``, ``scenarios``, ``reader``) and the server's public key.

ZAP decides at the handshake only. So the services check each request too: the ZMTP
``User-Id`` of a message (our ZAP handler sets it to the client's public key, z85) is
looked up in the allowlist as it is now, re-read whenever the keys directory changes
(every ``[security] check_interval_ms``): a revoked key is refused on a live connection
at its next message (``auth_refused_revoked``), and a bus cuts its subscribers once, so
that a revoked one fails its new handshake. Control ops are checked against the key's
role (roles.py); ingest and tasks against the node ids a node key may speak for
(``auth_refused_node``).

With ``[security] curve = false`` nothing is authenticated, and a socket may only bind a
loopback (or ipc, inproc) address: the factory refuses any other.

Clients that are not a service find their keys by endpoint (``register``: the test
cluster and the chaos runner register theirs), else by the process default
(``set_default``: each command sets its own), else from the default configuration with
the ``reader`` key.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from .config import ConfigError, ShoalConfig
from .keys import KeyInfo, KeysDir, KeysError

# ZAP domains: what a bound socket admits, by the role of the key.
ADMITS: dict[str, frozenset[str]] = {
    "shoal-node": frozenset({"node"}),  # ingest, tasks
    "shoal-ctl": frozenset({"reader", "service", "operator"}),  # control sockets, buses
    "shoal-any": frozenset({"node", "reader", "service", "operator"}),
}
NODE_SOCKETS = "shoal-node"
CTL_SOCKETS = "shoal-ctl"
ANY_SOCKET = "shoal-any"

# Keys of a process that trusts its peers: curve off (loopback only), or inproc.
TRUSTED = KeyInfo("trusted", "trusted", "")

AUTH_COUNTERS = (
    "auth_refused_key",
    "auth_refused_role",
    "auth_refused_node",
    "auth_refused_revoked",
)
# A refused key logs one line per key a minute (clients that try again, from a new socket).
REFUSAL_LOG_EVERY_S = 60.0
ZAP_REFRESH_S = 0.05  # the ZAP handler's look at the keys directory, at most this often


class InsecureBind(ConfigError):
    """A bind to a non-loopback address with Curve off."""


class Keyring:
    """The allowlist of one keys directory as this process sees it now (one per directory
    per process, shared by the ZAP handlers and the services' checks)."""

    _by_dir: dict[Path, Keyring] = {}
    _by_dir_lock = threading.Lock()

    def __init__(self, keys: KeysDir) -> None:
        self.dir = keys
        self._lock = threading.Lock()
        self._sig: Any = None
        self.keys: dict[str, KeyInfo] = {}
        self.generation = 0
        self.checked_at = 0.0
        self.refresh(force=True)

    @classmethod
    def of(cls, path: Path) -> Keyring:
        path = path.resolve()
        with cls._by_dir_lock:
            ring = cls._by_dir.get(path)
            if ring is None:
                ring = cls._by_dir[path] = Keyring(KeysDir(path))
            return ring

    def refresh(self, force: bool = False, every_s: float = 0.0) -> bool:
        """Re-read the allowlist if the directory changed; True if it did. Safe from any
        thread; at most once per ``every_s``."""
        now = time.monotonic()
        if not force and now - self.checked_at < every_s:
            return False
        with self._lock:
            self.checked_at = now
            sig = self.dir.signature()
            if sig == self._sig and not force:
                return False
            self._sig = sig
            keys = self.dir.allowed()
            if keys == self.keys and not force:
                return False
            self.keys = keys  # one reference swap: readers see the old or the new whole
            self.generation += 1
            return True

    def get(self, user: str) -> KeyInfo | None:
        return self.keys.get(user)


@dataclass(frozen=True)
class Security:
    """What one process presents on its sockets, and whom its bound sockets let in."""

    curve: bool = True
    keys_dir: Path | None = None
    name: str = "reader"  # the client key it connects with
    check_interval_s: float = 0.5
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: ShoalConfig, name: str) -> Security:
        sec = config.security
        return cls(
            curve=sec.curve,
            keys_dir=Path(sec.keys),
            name=name,
            check_interval_s=sec.check_interval_ms / 1000,
        )

    @classmethod
    def off(cls) -> Security:
        return cls(curve=False)

    def named(self, name: str) -> Security:
        """The same keys, another client key."""
        if name == self.name:
            return self
        return Security(self.curve, self.keys_dir, name, self.check_interval_s)

    def _dir(self) -> KeysDir:
        if self.keys_dir is None:
            raise ConfigError("curve is on but no keys directory is set ([security] keys)")
        return KeysDir(self.keys_dir)

    def keyring(self) -> Keyring:
        try:
            if not self._dir().exists():
                raise KeysError(f"no keys in {self.keys_dir} (shoal keys init makes them)")
            return Keyring.of(self._dir().path)
        except KeysError as err:
            raise ConfigError(f"[security] keys: {err}") from None

    def server_keys(self) -> tuple[bytes, bytes]:
        """(public, secret) of the cluster's server key."""
        if "server" not in self._cache:
            try:
                pub, sec = self._dir().server_secret()
            except KeysError as err:
                raise ConfigError(f"[security] keys: {err}") from None
            self._cache["server"] = (pub.encode(), sec.encode())
        return self._cache["server"]  # type: ignore[no-any-return]

    def client_keys(self) -> tuple[bytes, bytes, bytes]:
        """(server public, own public, own secret) for a connect."""
        if "client" not in self._cache:
            try:
                keys = self._dir()
                server = keys.server_public()
                _info, secret = keys.client(self.name)
            except KeysError as err:
                raise ConfigError(f"[security] keys: {err}") from None
            self._cache["client"] = (server.encode(), _info.public.encode(), secret.encode())
        return self._cache["client"]  # type: ignore[no-any-return]


# --- where clients find their keys ---------------------------------------------------------

_registered: dict[str, Security] = {}
_default: Security | None = None
_lock = threading.Lock()


def register(endpoints: Iterable[str], security: Security) -> None:
    """Clients connecting to these endpoints use security (a cluster's own keys)."""
    with _lock:
        for endpoint in endpoints:
            if endpoint:
                _registered[endpoint] = security


def unregister(endpoints: Iterable[str]) -> None:
    with _lock:
        for endpoint in endpoints:
            _registered.pop(endpoint, None)


def endpoints_of(config: ShoalConfig) -> list[str]:
    """Every ZMQ endpoint a config names (what ``register`` maps to its keys)."""
    from .config import _checks, _sections
    from .endpoints import endpoint_error

    out = []
    for _section, values in _sections(config):
        for key, check in _checks(type(values)).items():
            value = getattr(values, key)
            if check.why is endpoint_error and value:
                out.append(value)
    return out


def set_default(security: Security | None) -> None:
    """The keys of this process's clients when their endpoint is not registered."""
    global _default
    _default = security


def for_endpoint(endpoint: str) -> Security:
    found = _registered.get(endpoint)
    if found is not None:
        return found
    if _default is None:
        from .config import load_config

        config = load_config()
        set_default(Security.from_config(config, config.security.key or "reader"))
    assert _default is not None
    return _default


# --- the ZAP handler, one per context ------------------------------------------------------


class _Zap:
    """pyzmq's ThreadAuthenticator asking the keyring; counts what it refuses."""

    def __init__(self, ctx: zmq.Context[Any], keyring: Keyring, counters: MutableMapping[str, int]):
        from zmq.auth.thread import ThreadAuthenticator

        self.ctx = ctx
        self.keyring = keyring
        self.counters = counters
        self.refs = 0
        self.log: Any = None  # a JsonLog, when the owner has one
        self._logged: dict[tuple[str, str], float] = {}
        quiet = logging.getLogger("shoal.zap")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        self.auth = ThreadAuthenticator(ctx, log=quiet)
        self.auth.start()
        for domain in ADMITS:
            self.auth.configure_curve_callback(domain, _Check(self, domain))

    def check(self, domain: str, key: bytes) -> bool:
        ring = self.keyring
        ring.refresh(every_s=ZAP_REFRESH_S)  # a key revoked a moment ago is refused
        user = key.decode("ascii", "replace")
        info = ring.get(user)
        if info is None and ring.refresh():  # one added a moment ago is let in at once
            info = ring.get(user)
        if info is None:
            self._refused("auth_refused_key", user, "not in the allowlist")
            return False
        if info.role not in ADMITS.get(domain, frozenset()):
            self._refused("auth_refused_role", user, f"{info.name} ({info.role}) on {domain}")
            return False
        return True

    def _refused(self, counter: str, user: str, why: str) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1
        now = time.monotonic()
        if self.log is not None and now - self._logged.get((counter, user), -1e9) > 60.0:
            self._logged[(counter, user)] = now
            if len(self._logged) > 10_000:
                self._logged.clear()
            self.log.warning("handshake_refused", key=user, why=why)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.auth.stop()


class _Check:
    def __init__(self, zap: _Zap, domain: str) -> None:
        self.zap = zap
        self.domain = domain

    def callback(self, _domain: str, key: bytes) -> bool:
        try:
            return self.zap.check(self.domain, key)
        except Exception:  # the handler's thread must never die: refuse instead
            return False


_zaps: dict[int, _Zap] = {}
_zaps_lock = threading.Lock()


def acquire_zap(
    ctx: zmq.Context[Any], keyring: Keyring, counters: MutableMapping[str, int], log: Any = None
) -> _Zap:
    """The ZAP handler of ctx (started on first use); release_zap when the socket closes."""
    with _zaps_lock:
        zap = _zaps.get(id(ctx))
        if zap is None or zap.ctx is not ctx:
            zap = _zaps[id(ctx)] = _Zap(ctx, keyring, counters)
        if zap.log is None:
            zap.log = log
        zap.refs += 1
        return zap


def release_zap(ctx: zmq.Context[Any]) -> None:
    with _zaps_lock:
        zap = _zaps.get(id(ctx))
        if zap is None or zap.ctx is not ctx:
            return
        zap.refs -= 1
        if zap.refs <= 0:
            del _zaps[id(ctx)]
            zap.stop()


def _stop_all_zaps() -> None:
    """At exit: a context left with a running handler would block its termination."""
    with _zaps_lock:
        zaps = list(_zaps.values())
        _zaps.clear()
    for zap in zaps:
        zap.stop()


import atexit  # noqa: E402

atexit.register(_stop_all_zaps)


# --- per-message checks --------------------------------------------------------------------


class Gate:
    """The key a message came with, as the allowlist is now, and the refusals, counted.

    Usage (in a service)::

        key = self.gate.key(frame)       # a zmq.Frame (recv with copy=False)
        if key is None: ...              # revoked since the handshake: refused, counted
        if not key.may_speak(node_id): self.gate.refuse("node", ...)
    """

    def __init__(
        self, security: Security, counters: MutableMapping[str, int], rejects: Any = None
    ) -> None:
        self.on = security.curve
        self.counters = counters
        self.rejects = rejects
        self.ring: Keyring | None = None
        self.generation = 0
        self._seen: dict[str, KeyInfo] = {}
        if self.on:
            for name in AUTH_COUNTERS:
                counters.setdefault(name, 0)

    def attach(self, security: Security) -> None:
        """Follow the keyring of security (at the first bind: a service that binds nothing
        never needs its keys directory)."""
        if self.on and self.ring is None:
            self.ring = security.keyring()
            self.generation = self.ring.generation
            self._seen = self.ring.keys

    def user(self, frame: zmq.Frame) -> str | None:
        """The frame's User-Id (its sender's public key); None: none (inproc, curve off)."""
        if not self.on:
            return None
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            return None
        return user if isinstance(user, str) else None

    def lookup(self, user: str | None) -> KeyInfo | None:
        """The key of a User-Id as the allowlist has it now; None (counted) if it has left."""
        if user is None:
            return TRUSTED  # curve off, or a peer in this process (inproc)
        info = self.ring.get(user) if self.ring is not None else None
        if info is None:
            self.refuse("revoked", user)
        return info

    def key(self, frame: zmq.Frame) -> KeyInfo | None:
        return self.lookup(self.user(frame))

    def refuse(self, kind: str, detail: str) -> None:
        name = f"auth_refused_{kind}"
        self.counters[name] = self.counters.get(name, 0) + 1
        if self.rejects is not None:
            self.rejects.add(f"auth_{kind}", detail)

    def changed(self) -> tuple[bool, bool]:
        """(changed, narrowed) since the last call (the service's timer asks): narrowed if
        a key left the allowlist or changed (its role, its nodes), not just one added."""
        ring = self.ring
        if ring is None:
            return False, False
        ring.refresh(every_s=0.0)
        if ring.generation == self.generation:
            return False, False
        self.generation = ring.generation
        now = ring.keys
        narrowed = any(now.get(public) != info for public, info in self._seen.items())
        self._seen = now
        return True, narrowed


def may_role(key: KeyInfo, service: str, op: str) -> bool:
    from .roles import may

    return key.role == "trusted" or may(key.role, service, op)
