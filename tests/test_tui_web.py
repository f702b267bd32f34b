"""`shoal tui --web`: the console served by textual-serve, read in a real headless Chromium
against a running cluster; and the refusals (a non-loopback host, a port taken, another
origin's WebSocket)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser, chromium_path, wait_until
from click.testing import CliRunner

from shoal.services.cli.main import main as cli
from shoal.services.testing import Cluster, free_port
from shoal.tui.web import (
    WebConsoleError,
    check_host,
    console_command,
    is_loopback,
    origin_allowed,
    public_url,
)

NODES = 3
# Where the screenshot is kept: $SHOAL_TEST_ARTIFACTS, else test-artifacts/ (git ignores it).
ARTIFACTS = Path(
    os.environ.get("SHOAL_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


def test_loopback_hosts_are_served_and_others_refused_with_the_reason() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "10.1.2.3", "::", "no-such-host.invalid"):
        assert not is_loopback(host), host
        with pytest.raises(
            WebConsoleError, match="not a loopback address: the console has no login"
        ):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)  # said explicitly
    assert public_url("::1", 80) == "http://[::1]:80"


def test_only_this_consoles_own_page_may_open_its_websocket() -> None:
    served = "http://127.0.0.1:7780"
    for origin in (None, served, served + "/", "http://localhost:7780", "http://[::1]:7780"):
        assert origin_allowed(origin, served), origin
    for origin in (
        "http://elsewhere.example",
        "http://evil.example:7780",  # even if it resolves to 127.0.0.1 (DNS rebinding)
        "http://127.0.0.1:8080",  # another local page
        "https://127.0.0.1:7780",
        "null",
    ):
        assert not origin_allowed(origin, served), origin


def test_each_tab_runs_shoal_tui_with_the_same_options_never_web_again() -> None:
    command = console_command(["--readonly", "--config", "/tmp/a b.toml"])
    assert command.startswith(shlex.quote(sys.executable))
    assert "shoal.services.cli tui --readonly --config '/tmp/a b.toml'" in command
    assert "--web" not in command


def test_shoal_tui_web_refuses_a_public_host_unless_told(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["tui", "--web", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--host 0.0.0.0 is not a loopback address" in result.output
    assert "--allow-remote" in result.output


def test_web_options_without_web_are_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["tui", "--port", "9000", "--allow-remote"])
    assert result.exit_code == 2
    assert "--port, --allow-remote: only with --web" in result.output


def test_shoal_tui_web_says_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["tui", "--web", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot serve the console on http://127.0.0.1:{port}" in result.output
    assert "choose another --port" in result.output


@pytest.fixture
def web_console(tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """A cluster, and `shoal tui --web` on it: the page's URL."""
    with Cluster(tmp_path, nodes=NODES, sim={"tick_ms": 20}) as cluster:
        port = free_port()
        log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 (closed below)
        argv = [sys.executable, "-m", "shoal.services.cli", "tui", "--web", "--port", str(port)]
        proc = subprocess.Popen(
            [*argv, "--config", str(cluster.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its consoles (one per tab) stop with its group
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until(lambda: _answers(url) or proc.poll() is not None, 30, "the web console")
            assert proc.poll() is None, (tmp_path / "web.log").read_text()
            yield cluster, url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_a_websocket_from_another_origin_is_refused(web_console: tuple[Cluster, str]) -> None:
    _, url = web_console
    request = urllib.request.Request(
        url + "ws",
        headers={
            "Origin": "http://elsewhere.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403


@pytest.mark.skipif(
    chromium_path() is None,
    reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_the_console_in_a_headless_chromium_shows_every_node(
    web_console: tuple[Cluster, str], tmp_path: Path
) -> None:
    import textual_serve

    cluster, url = web_console
    script = Path(textual_serve.__file__).parent / "static" / "js" / "textual.js"
    ids = [f"sim-{i:03d}" for i in range(NODES)]
    with Browser(tmp_path / "chromium-profile") as browser:
        page = browser.tab()
        page.capture_terminal(url + "static/js/textual.js", script.read_text())
        page.navigate(url)
        try:
            screen = wait_until(
                lambda: (text := page.terminal_text()) and all(i in text for i in ids) and text,
                60,
                "every node id in the page",
            )
            assert "alive" in screen and "nodes [3/3]" in screen
            page.screenshot(ARTIFACTS / "web-console-nodes.png")
            # Keys typed into the page reach the console: the events view.
            page.focus_terminal()
            page.type(":")  # the prompt first: what is typed before it opens goes elsewhere
            wait_until(lambda: "nodes | events" in (page.terminal_text() or ""), 30, "the prompt")
            page.type("events")
            page.press_enter()
            wait_until(lambda: "follow: on" in (page.terminal_text() or ""), 30, "the events view")
        finally:  # what the page showed last, kept whether it passed or not
            page.screenshot(ARTIFACTS / "web-console.png")
