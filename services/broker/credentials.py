"""MQTT credentials: one login per board (its node id) and per service, kept in one
directory (``[mqtt] credentials``), hashed where a broker reads them.

    passwd            user:$7$101$<salt>$<hash> lines: mosquitto 2's own password file
                      format (PBKDF2-SHA512), read as is by mosquitto and by the embedded
                      broker (services/broker/access.py); no password in clear
    acl               mosquitto's ACL for the same rules (``pattern`` lines with ``%u``)
    secrets/<user>    the password, for what logs in from this host (the shim, emulated
                      boards, ``shoal firmware deploy`` writing a board's config.py);
                      mode 0600 in a 0700 directory, like any private key

A board's username is its node id; a service's is ``svc.<name>`` (a "." is in no node id, so
the two never meet). Passwords are 128 random bits (``secrets.token_urlsafe``): no one
guesses one, so the hash needs no slow key stretching; 101 PBKDF2 rounds is what
``mosquitto_passwd`` uses. Writers (``shoal devices``, ``shoal up``, the board emulator)
take a lock on the directory and replace files whole (rename): a broker reading the
password file never sees half of one.

Usage::

    creds = Credentials("shoal-keys/mqtt")
    password = creds.ensure("esp32-01")      # made once, the same ever after
    creds.export_mosquitto(Path("/etc/mosquitto/shoal"))
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.protocol import limits
from shoal.services.runtime.config import ConfigError

SERVICE_PREFIX = "svc."
SHIM_USER = "svc.shim"
RESERVED_BOARD_IDS = frozenset({"shim"})  # shoal/v1/shim/... is the shims' own
ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12
ROOT = "shoal/v1/"
_NODE_ID = re.compile(limits.NODE_ID_PATTERN)
_SERVICE = re.compile(r"^svc\.[a-z0-9][a-z0-9-]{0,31}\Z")


class CredentialsError(ConfigError):
    """The credentials directory cannot be used: one line naming the key and the path."""


def is_board(user: str) -> bool:
    """A board's login: a node id that is no reserved one."""
    return bool(_NODE_ID.match(user)) and user not in RESERVED_BOARD_IDS


def is_service(user: str) -> bool:
    return bool(_SERVICE.match(user))


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """mosquitto 2's ``$7$`` hash: PBKDF2-HMAC-SHA512, 12 bytes of salt, 64 of digest."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True when password is the one hashed (constant-time compare); False for a hash that
    is not a ``$7$`` one."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= 1_000_000:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(got, want)


def read_passwd(path: Path) -> dict[str, str]:
    """user -> hash from a mosquitto password file (comments and blank lines skipped)."""
    users: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            user, hashed = line.split(":", 1)
            users[user] = hashed
    return users


def mosquitto_acl(services: list[str]) -> str:
    """The ACL of docs/protocol.md §11 in mosquitto's words: ``pattern`` lines hold for every
    user (``%u``: its username, a board's node id); services get all of ``shoal/v1/#``."""
    lines = [
        "# shoal: a board (username = its node id) writes and reads only its own topics,",
        "# and reads the shims' state; services read and write every shoal topic.",
        f"pattern write {ROOT}%u/#",
        f"pattern read {ROOT}%u/#",
        f"pattern read {ROOT}shim/+/state",
    ]
    for user in services:
        lines += ["", f"user {user}", f"topic readwrite {ROOT}#"]
    return "\n".join(lines) + "\n"


class Credentials:
    """The credentials directory; every write under its lock."""

    def __init__(self, directory: str | Path, *, key: str = "mqtt.credentials") -> None:
        self.dir = Path(directory)
        self.key = key
        self.passwd = self.dir / "passwd"
        self.acl = self.dir / "acl"
        self.secrets = self.dir / "secrets"

    def _error(self, reason: str) -> CredentialsError:
        return CredentialsError(f"{self.key} '{self.dir}': {reason}")

    # --- reads ---------------------------------------------------------------------------

    def users(self) -> dict[str, str]:
        """user -> hash, as the password file holds them ({} before the first login)."""
        try:
            return read_passwd(self.passwd)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise self._error(f"cannot read {self.passwd.name}: {err.strerror}") from None

    def secret(self, user: str) -> str | None:
        try:
            return (self.secrets / user).read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._error(f"cannot read the secret of {user}: {err.strerror}") from None

    # --- writes --------------------------------------------------------------------------

    def ensure(self, user: str) -> str:
        """user's password: the one kept, or a new one (made, hashed, written) if none is."""
        self._check_user(user)
        known = self.secret(user)
        if known is not None and known and user in self.users():
            return known
        return self.make(user, keep=True)

    def make(self, user: str, *, keep: bool = False, password: str | None = None) -> str:
        """A new password for user (replacing any: the old one stops working), unless
        ``keep`` and one is already there. ``password``: this one rather than a random one
        (a documented example; a test)."""
        self._check_user(user)
        with self._locked():
            users = self.users()
            old = self.secret(user)
            if keep and old is not None and user in users and verify_password(old, users[user]):
                return old
            password = password or secrets.token_urlsafe(16)
            self._write(self.secrets / user, password + "\n")
            users[user] = hash_password(password)
            self._write_users(users)
        return password

    def ensure_file(self) -> None:
        """The password file and the ACL, empty if there are no users yet (a broker needs
        the file to exist)."""
        with self._locked():
            if not self.passwd.exists():
                self._write_users({})

    def remove(self, user: str) -> bool:
        """Revoke user's login: its hash and its secret go. False if it had none."""
        with self._locked():
            users = self.users()
            found = users.pop(user, None) is not None
            if found:
                self._write_users(users)
            with contextlib.suppress(FileNotFoundError):
                (self.secrets / user).unlink()
                found = True
        return found

    def export_mosquitto(self, target: Path) -> tuple[Path, Path]:
        """Copy the password file and the ACL into target (mode 0600) for a mosquitto
        (``password_file``, ``acl_file``): the same hashes, nothing in clear."""
        self.ensure_file()
        target.mkdir(parents=True, exist_ok=True)
        out = target / "passwd", target / "acl"
        for src, dst in zip((self.passwd, self.acl), out, strict=True):
            shutil.copyfile(src, dst)
            dst.chmod(0o600)
        return out

    def _check_user(self, user: str) -> None:
        if not (is_board(user) or is_service(user)):
            raise ValueError(
                f"MQTT user {user!r}: a node id (not 'shim') or svc.<name> for a service"
            )

    def _write_users(self, users: dict[str, str]) -> None:
        text = "".join(f"{u}:{h}\n" for u, h in sorted(users.items()))
        self._write(self.passwd, text)
        self._write(self.acl, mosquitto_acl(sorted(u for u in users if is_service(u))))

    def _write(self, path: Path, text: str) -> None:
        """path replaced whole (a reader sees the old file or the new one), mode 0600."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            raise self._error(f"cannot write {path.name}: {err.strerror}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise self._error(f"cannot use the directory: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def service_login(cfg: Any, user: str) -> tuple[str, str]:
    """A service's MQTT (username, password): ``[mqtt] username`` / ``password`` when set,
    else ``user`` (svc.<name>) from the credentials directory (made on first use)."""
    if cfg.username:
        return cfg.username, cfg.password
    return user, Credentials(cfg.credentials).ensure(user)


def shim_login(cfg: Any) -> tuple[str, str]:
    """The shim's login (svc.shim unless ``[mqtt] username`` says otherwise)."""
    return service_login(cfg, SHIM_USER)
