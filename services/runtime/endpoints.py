"""What an address key may hold: a ZMQ endpoint, an MQTT broker URL, a listen address.

Each ``*_error`` function returns why a value is not one (a phrase that follows the quoted
value: "'localhost:7700' is not a ZMQ endpoint (...)"), or None; config.py attaches them
to the keys' types and names the key.
"""

from __future__ import annotations

import ipaddress
import re

ZMQ_FORMS = "tcp://HOST:PORT, ipc://PATH, inproc://NAME"
PORT_RANGE = range(1, 65536)
IPC_PATH_MAX = 107  # sun_path holds 108 bytes with its NUL
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(\.(?!-)[A-Za-z0-9_-]{1,63})*\.?\Z")


def _host_error(host: str, star: bool) -> str | None:
    """Why host is not a name, an IPv4 address, [IPv6] (or ``*`` when star), or None."""
    if host == "*" and star:
        return None
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"has a bad IPv6 address {host}"
        return None if host.endswith("]") else f"has a bad IPv6 address {host}"
    if re.fullmatch(r"[0-9.]+", host):  # all digits: an IPv4 address or nothing
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"has a bad IPv4 address {host}"
        return None
    if len(host) > 253 or not _HOSTNAME.match(host):
        return f"has a bad host {host!r}"
    return None


def _port_error(port: str, star: bool) -> str | None:
    if port == "*" and star:  # ZMQ binds any free port
        return None
    if not port.isdigit() or int(port) not in PORT_RANGE:
        return f"has port {port or '(none)'} (must be 1..65535)"
    return None


def _split(text: str) -> tuple[str, str | None] | None:
    """ "host:port", "[v6]:port" or "host" as (host, port or None), brackets kept; None if
    it is none of these."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (len(text) > end + 1 and text[end + 1] != ":"):
            return None
        rest = text[end + 2 :] if len(text) > end + 1 else None
        return text[: end + 1], rest
    if text.count(":") > 1:
        return None  # an IPv6 address without brackets: its port cannot be told apart
    host, sep, port = text.partition(":")
    return host, port if sep else None


def endpoint_error(value: str) -> str | None:
    """Why value is not a ZMQ endpoint shoal can bind and connect, or None."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        return f"is not a ZMQ endpoint ({ZMQ_FORMS})"
    if scheme == "inproc":
        return None if rest else "has no name (inproc://NAME)"
    if scheme == "ipc":
        if not rest:
            return "has no path (ipc://PATH)"
        size = len(rest.encode())
        return f"has a path of {size} bytes, over {IPC_PATH_MAX}" if size > IPC_PATH_MAX else None
    parts = _split(rest)
    if parts is None or parts[1] is None or not parts[0]:
        return "is not tcp://HOST:PORT (HOST a name, an IPv4 address, [IPv6] or *)"
    return _host_error(parts[0], star=True) or _port_error(parts[1], star=True)


def mqtt_url_error(value: str) -> str | None:
    """Why value is not mqtt://HOST[:PORT], or None."""
    if not value.startswith("mqtt://"):
        return "is not mqtt://HOST[:PORT]"
    parts = _split(value.removeprefix("mqtt://"))
    if parts is None or not parts[0]:
        return "is not mqtt://HOST[:PORT]"
    host, port = parts
    return _host_error(host, star=False) or (None if port is None else _port_error(port, False))


def listen_error(value: str) -> str | None:
    """Why value is not HOST:PORT to listen on (HOST "" : every interface), or None."""
    host, port = _split(value) or ("", None)
    if port is None:
        return "is not HOST:PORT (HOST empty for every interface)"
    return (host and _host_error(host, star=False)) or _port_error(port, star=False)


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """ "host:port", "[v6]:port" or "host" as (host, port), brackets removed."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.index("]")
        host, rest = text[1:end], text[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif ":" in text:
        host, _, tail = text.rpartition(":")
        port = int(tail)
    return host, port


def is_local(endpoint: str) -> bool:
    """Whether endpoint is reachable from this machine only (loopback, ipc, inproc): what
    a socket may bind with Curve off."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return True
    host = rest.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # *, a name, an interface: anyone on the network
