"""The keys directory: CurveZMQ certificates, each public key with its role (``shoal keys``).

Layout (``[security] keys``, default ``shoal-keys`` beside the ledger)::

    shoal-keys/
      server.key              the cluster's server public key: every client needs it
      server.key_secret       0600: every process that binds a socket (the services)
      allowed/NAME.key        the allowlist: one public certificate per key, with its role
                              and, for a node key, the node ids it may speak for
      private/NAME.key_secret 0600 (directory 0700): the secret keys made here
      revoked/NAME.key        revoked certificates, kept for the record

The files are ZeroMQ certificates in czmq's format (``zmq.auth.load_certificate`` reads
them): a ``metadata`` section (``role``, ``nodes``) and a ``curve`` section (``public-key``,
and in a secret file ``secret-key``). The allowlist is the ``allowed`` directory and
nothing else: a key is let in while its certificate is there, and revoking moves it to
``revoked``. Services re-read the directory when it changes (security.py).

Roles (roles.py says what each may do): ``node`` (ingest and tasks, for the ids its
``nodes`` patterns match: ``sim-*``; ``*`` for a gateway that speaks for any board),
``service``, ``reader``, ``operator``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("node", "service", "reader", "operator")
SERVER = "server"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# A node id pattern: node id characters, and * / ? as in fnmatch.
NODE_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?-]{1,64}\Z")
Z85_KEY = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}\Z")


class KeysError(Exception):
    """A keys directory or key that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class KeyInfo:
    """One key of the allowlist: who it is, and what it may do."""

    name: str
    role: str
    public: str  # z85, 40 characters: what the ZMTP User-Id of its connections says
    nodes: tuple[str, ...] = ()  # fnmatch patterns of the node ids a node key speaks for
    _exact: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        exact = frozenset(p for p in self.nodes if not any(c in p for c in "*?["))
        object.__setattr__(self, "_exact", exact)

    def may_speak(self, node_id: str) -> bool:
        """Whether this key may speak for node_id (only a node key speaks for any; a
        trusted peer, with curve off or in this process, for every one)."""
        if self.role == "trusted":
            return True
        if self.role != "node":
            return False
        if node_id in self._exact:
            return True
        return any(fnmatch.fnmatchcase(node_id, p) for p in self.nodes if p not in self._exact)


# The keys `shoal keys init` (and the first `shoal up`) make: each process that connects
# presents its own. The services that only bind (relay, supervisor, boards) need the
# server key alone.
def standard_keys(sim_prefix: str = "sim") -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        "liveness": ("service", ()),
        "delegator": ("service", ()),
        "registry": ("service", ()),
        "ota": ("service", ()),  # the OTA service follows the monitor (its rollout's gate)
        "sim": ("node", (f"{sim_prefix}-*",)),
        "shim": ("node", ("*",)),  # a gateway: it speaks for every board behind the broker
        "console": ("operator", ()),  # shoal tui, and the console shoal up opens
        "scenarios": ("operator", ()),  # shoal chaos run, and the console's scenarios
        "operator": ("operator", ()),  # the operator's commands: shoal firmware ota
        "reader": ("reader", ()),  # shoal status, shoal tasks, shoal tui --readonly
    }


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "").replace('"', "") + '"'


def _certificate(kind: str, info: KeyInfo, secret: str | None) -> str:
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"#   ****  shoal key {info.name!r}, made {made}  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
    ]
    if secret is not None:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += [
        "",
        "metadata",
        f"    name = {_quote(info.name)}",
        f"    role = {_quote(info.role)}",
        f"    nodes = {_quote(','.join(info.nodes))}",
        "curve",
        f"    public-key = {_quote(info.public)}",
    ]
    if secret is not None:
        lines.append(f"    secret-key = {_quote(secret)}")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    """Write path whole (a temporary file renamed over it): a reader never sees half a
    certificate, and a secret file is never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask said
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_certificate(path: Path) -> tuple[dict[str, str], str, str | None]:
    """(metadata, public key, secret key or None) of a certificate file."""
    try:
        text = path.read_text()
    except OSError as err:
        raise KeysError(f"cannot read {path}: {err.strerror}") from None
    meta: dict[str, str] = {}
    public: str | None = None
    secret: str | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw.startswith((" ", "\t")):
            section = line
            continue
        name, sep, value = line.partition("=")
        if not sep:
            continue
        name, value = name.strip(), value.strip().strip("'\"")
        if section == "metadata":
            meta[name] = value
        elif section == "curve" and name == "public-key":
            public = value
        elif section == "curve" and name == "secret-key":
            secret = value
    if public is None or not Z85_KEY.match(public):
        raise KeysError(f"{path}: no public key (public-key = 40 z85 characters)")
    if secret is not None and not Z85_KEY.match(secret):
        raise KeysError(f"{path}: a bad secret key")
    return meta, public, secret


def check_secret_mode(path: Path) -> None:
    """A secret file others can read is refused, as ssh refuses such a private key."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise KeysError(f"cannot read {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )


def parse_nodes(text: str) -> tuple[str, ...]:
    """ "sim-*, board-01" as patterns; each checked."""
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in patterns:
        if not NODE_PATTERN.match(p):
            raise KeysError(f"node pattern {p!r}: node id characters and * ? only")
    return patterns


class KeysDir:
    """One keys directory. Usage::

    keys = KeysDir("shoal-keys")
    keys.init()                                   # what is missing of the standard set
    keys.add("gw-7", "node", nodes=("esp-7*",))   # a new key pair; its secret in private/
    keys.revoke("gw-7")                           # out of the allowlist at once
    keys.allowed()                                # {public z85: KeyInfo}
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.allowed_dir = self.path / "allowed"
        self.private_dir = self.path / "private"
        self.revoked_dir = self.path / "revoked"

    # --- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / f"{SERVER}.key_secret").exists()

    def server_public(self) -> str:
        path = self.path / f"{SERVER}.key"
        if not path.exists():
            raise KeysError(f"no server key in {self.path} (shoal keys init makes one)")
        return read_certificate(path)[1]

    def server_secret(self) -> tuple[str, str]:
        """(public, secret) of the server key: what a process that binds needs."""
        path = self.path / f"{SERVER}.key_secret"
        if not path.exists():
            raise KeysError(f"no server key in {self.path} (shoal keys init makes one)")
        check_secret_mode(path)
        _meta, public, secret = read_certificate(path)
        if secret is None:
            raise KeysError(f"{path}: no secret key")
        return public, secret

    def client(self, name: str) -> tuple[KeyInfo, str]:
        """(its allowlist entry, its secret) of the key a client presents."""
        path = self.private_dir / f"{name}.key_secret"
        if not path.exists():
            raise KeysError(
                f"no key {name!r} in {self.private_dir} "
                f"(shoal keys init makes the standard ones; shoal keys add {name} --role ...)"
            )
        check_secret_mode(path)
        meta, public, secret = read_certificate(path)
        if secret is None:
            raise KeysError(f"{path}: no secret key")
        info = KeyInfo(name, meta.get("role", ""), public, parse_nodes(meta.get("nodes", "")))
        return info, secret

    def _entries(self, folder: Path) -> list[KeyInfo]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(folder.glob("*.key")):
                try:
                    meta, public, _ = read_certificate(path)
                    role = meta.get("role", "")
                    nodes = parse_nodes(meta.get("nodes", ""))
                except KeysError:
                    continue  # a damaged file lets nobody in
                if role in ROLES:  # its name as made (a revoked file's has a time too)
                    out.append(KeyInfo(meta.get("name") or path.stem, role, public, nodes))
        return out

    def allowed(self) -> dict[str, KeyInfo]:
        """The allowlist: public key (z85) -> its entry."""
        return {k.public: k for k in self._entries(self.allowed_dir)}

    def revoked(self) -> list[KeyInfo]:
        return self._entries(self.revoked_dir)

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """What changes when the allowlist does (names, sizes, times): cheap to compare."""
        sig = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.allowed_dir):
                if entry.name.endswith(".key"):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        sig.append((entry.name, st.st_size, st.st_mtime_ns))
        return tuple(sorted(sig))

    # --- writing -------------------------------------------------------------------------

    def _dirs(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.allowed_dir.mkdir(exist_ok=True)
        self.revoked_dir.mkdir(exist_ok=True)
        self.private_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.private_dir, 0o700)

    def init(self, sim_prefix: str = "sim") -> list[str]:
        """Make what is missing: the server key and the standard keys; the names made."""
        import zmq

        self._dirs()
        made = []
        if not (self.path / f"{SERVER}.key_secret").exists():
            public, secret = (k.decode() for k in zmq.curve_keypair())
            info = KeyInfo(SERVER, "server", public)
            _write(self.path / f"{SERVER}.key", _certificate("Public", info, None), 0o644)
            _write(
                self.path / f"{SERVER}.key_secret", _certificate("**Secret**", info, secret), 0o600
            )
            made.append(SERVER)
        for name, (role, nodes) in standard_keys(sim_prefix).items():
            if (
                not (self.private_dir / f"{name}.key_secret").exists()
                and not (self.allowed_dir / f"{name}.key").exists()
            ):
                self.add(name, role, nodes)
                made.append(name)
        return made

    def add(
        self, name: str, role: str, nodes: Iterable[str] = (), public: str | None = None
    ) -> KeyInfo:
        """A key into the allowlist: a new pair (its secret in private/), or the public key
        of a pair made elsewhere (a gateway's own)."""
        import zmq

        if not NAME_PATTERN.match(name) or name == SERVER:
            raise KeysError(
                f"key name {name!r}: lower case letters, digits, - and _ (and not {SERVER!r})"
            )
        if role not in ROLES:
            raise KeysError(f"role {role!r}: one of {', '.join(ROLES)}")
        patterns = parse_nodes(",".join(nodes))
        if role == "node" and not patterns:
            raise KeysError("a node key needs --nodes: the node ids it may speak for")
        if role != "node" and patterns:
            raise KeysError(f"--nodes is for node keys only (not {role})")
        self._dirs()
        if (self.allowed_dir / f"{name}.key").exists():
            raise KeysError(f"key {name!r} exists (shoal keys revoke {name} first)")
        secret: str | None = None
        if public is None:
            pub, sec = zmq.curve_keypair()
            public, secret = pub.decode(), sec.decode()
        elif not Z85_KEY.match(public):
            raise KeysError("--public-key: 40 z85 characters (zmq.curve_keypair()[0])")
        if public in self.allowed():
            raise KeysError("that public key is in the allowlist already")
        info = KeyInfo(name, role, public, patterns)
        if secret is not None:
            _write(
                self.private_dir / f"{name}.key_secret",
                _certificate("**Secret**", info, secret),
                0o600,
            )
        _write(self.allowed_dir / f"{name}.key", _certificate("Public", info, None), 0o644)
        return info

    def revoke(self, name: str) -> KeyInfo:
        """Out of the allowlist (into revoked/), its secret deleted: the services refuse it
        from their next look at the directory on, live connections included."""
        path = self.allowed_dir / f"{name}.key"
        if name == SERVER:
            raise KeysError("the server key cannot be revoked (make a new keys directory)")
        if not path.exists():
            raise KeysError(f"no key {name!r} in {self.allowed_dir}")
        meta, public, _ = read_certificate(path)
        info = KeyInfo(name, meta.get("role", ""), public, parse_nodes(meta.get("nodes", "")))
        self._dirs()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        os.replace(path, self.revoked_dir / f"{name}-{stamp}.key")
        with contextlib.suppress(FileNotFoundError):
            (self.private_dir / f"{name}.key_secret").unlink()
        return info

    def listing(self) -> list[dict[str, object]]:
        """Every key: allowed ones, then revoked ones (for ``shoal keys list``)."""
        rows: list[dict[str, object]] = []
        for k in sorted(self.allowed().values(), key=lambda k: k.name):
            rows.append(
                {
                    "name": k.name,
                    "role": k.role,
                    "nodes": list(k.nodes),
                    "public": k.public,
                    "state": "allowed",
                    "secret_here": (self.private_dir / f"{k.name}.key_secret").exists(),
                }
            )
        for k in self.revoked():
            rows.append(
                {
                    "name": k.name,
                    "role": k.role,
                    "nodes": list(k.nodes),
                    "public": k.public,
                    "state": "revoked",
                    "secret_here": False,
                }
            )
        return rows
