"""The console in a browser: `shoal tui --web` serves it over HTTP with textual-serve.

    serve_console(["--config", "shoal.toml"], host="127.0.0.1", port=7780)

textual-serve runs one console process per browser tab (``shoal tui`` under Textual's web
driver) and relays its terminal over a WebSocket to xterm.js in the page. The console has no
login of its own and can crash, hang and drain nodes, so it is served on loopback unless the
caller says otherwise (``check_host``), and the WebSocket is refused to any page of another
origin (``ConsoleServer``): a page from elsewhere open in the same browser could otherwise
open ``ws://127.0.0.1:PORT/ws`` and type into the console.
"""

from __future__ import annotations

import errno
import ipaddress
import shlex
import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


class WebConsoleError(Exception):
    """The console cannot be served as asked (a host, a port); the message says why."""


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a host other machines could reach, unless ``allow_remote`` says so."""
    if allow_remote or is_loopback(host):
        return
    raise WebConsoleError(
        f"--host {host} is not a loopback address: the console has no login and its keys "
        "crash, hang and drain nodes, so anyone who reaches the port could; serve it on "
        "127.0.0.1 (the default) and reach it through an SSH tunnel, or pass --allow-remote "
        "to serve it there anyway"
    )


def public_url(host: str, port: int) -> str:
    """The URL the page and its WebSocket are served under (an IPv6 host in brackets)."""
    bare = host.strip("[]")
    return f"http://[{bare}]:{port}" if ":" in bare else f"http://{bare}:{port}"


def console_command(tui_args: Sequence[str]) -> str:
    """The shell command textual-serve runs for each browser session: this Python's
    ``shoal tui`` with the same options (config, read-only), never ``--web`` again."""
    argv = [sys.executable, "-m", "shoal.services.cli", "tui", *tui_args]
    return shlex.join(argv)


def origin_allowed(origin: str | None, served_at: str) -> bool:
    """A WebSocket may come from this console's own page: no Origin (not a browser), the
    URL it is served at, or the same port under another loopback name (``localhost`` for
    ``127.0.0.1``, an SSH tunnel's end). A name is taken literally, never resolved, so a
    DNS-rebound ``evil.example`` pointing at 127.0.0.1 is still another origin."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin == served_at:
        return True
    mine, theirs = urlsplit(served_at), urlsplit(origin)
    if theirs.scheme != "http" or theirs.port != mine.port or theirs.hostname is None:
        return False
    if theirs.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(theirs.hostname).is_loopback
    except ValueError:
        return False


def _server_class() -> type[Any]:
    from aiohttp import web
    from textual_serve.server import Server

    class ConsoleServer(Server):
        """textual-serve's server, its WebSocket only for pages it served itself."""

        async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
            origin = request.headers.get("Origin")
            if not origin_allowed(origin, self.public_url):
                raise web.HTTPForbidden(
                    text=f"origin {origin} is not this console's ({self.public_url})"
                )
            return await super().handle_websocket(request)

    return ConsoleServer


def check_port_free(host: str, port: int) -> None:
    """Say so in one line when the port is taken, before the server's own traceback."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as err:
            hint = " (another --web console? choose another --port)"
            raise WebConsoleError(
                f"cannot serve the console on {public_url(host, port)}: {err.strerror}"
                + (hint if err.errno == errno.EADDRINUSE else "")
            ) from None


def serve_console(
    tui_args: Sequence[str], host: str, port: int, allow_remote: bool = False
) -> None:
    """Serve the console until Ctrl-C (or SIGTERM): each browser tab gets its own."""
    check_host(host, allow_remote)
    check_port_free(host, port)
    server = _server_class()(
        console_command(tui_args),
        host=host.strip("[]"),
        port=port,
        title="shoal console",
        public_url=public_url(host, port),
    )
    server.serve()
