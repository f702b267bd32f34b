"""A headless Chromium driven over the DevTools protocol, for the console served in a page.

    with Browser(tmp_path / "profile") as browser:
        page = browser.tab()
        page.capture_terminal(script_url, script_source)
        page.navigate("http://127.0.0.1:7780/")
        page.terminal_text()        # what xterm.js shows, row by row
        page.screenshot(path)

Why CDP over a WebSocket rather than Playwright or Selenium: `websockets` is already here
(amqtt's dependency) and Debian's `chromium` is all the browser it needs, where Playwright
wants a browser build of its own (which this machine cannot download) and Selenium a second
package (chromium-driver) and a driver process. The protocol calls used are few and stable:
Target listing, Page.navigate, Runtime.evaluate, Debugger.setBreakpointByUrl,
Input.insertText and Page.captureScreenshot.

textual-serve draws the terminal with xterm.js on a canvas (its WebGL or canvas renderer),
so the page's DOM holds no text, and its Terminal object is local to textual.js. A
breakpoint whose condition stores ``this.terminal`` in ``window`` and is false (so it never
pauses), set where textual.js writes the console's bytes to the terminal, hands the object to
the page; then ``terminal.buffer`` reads the screen as the user sees it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

# Where textual.js hands the console's bytes to xterm.js (the onmessage handler).
TERMINAL_WRITE = "this.terminal.write(t,"
CAPTURE = "(window.__shoalTerminal = this.terminal, false)"
READ_SCREEN = """(() => {
  const t = window.__shoalTerminal;
  if (!t) return null;
  const b = t.buffer.active, rows = [];
  for (let i = 0; i < t.rows; i++) {
    const line = b.getLine(b.viewportY + i);
    rows.push(line ? line.translateToString(true) : "");
  }
  return rows.join("\\n");
})()"""

# Run as root in a container: no sandbox; no GPU; and nothing but this machine on the
# network (the page asks a font server for Roboto Mono: refused here, never looked up).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
    "--window-size=1600,1000",
]


def chromium_path() -> str | None:
    """Debian's `chromium` (or another name for the same browser), None if none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def wait_until(condition: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Page:
    """One tab, over its own DevTools WebSocket."""

    def __init__(self, ws_url: str) -> None:
        self._ws: ClientConnection = connect(ws_url, max_size=64 * 2**20, open_timeout=10)
        self._id = 0

    def call(self, method: str, timeout_s: float = 15.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") != self._id:
                continue  # an event: none is asked for but the Debugger's own
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def capture_terminal(self, script_url: str, script_source: str) -> None:
        """Have textual.js hand its Terminal to the page (the module docstring says how)."""
        offset = script_source.index(TERMINAL_WRITE)
        line = script_source.count("\n", 0, offset)
        column = offset - (script_source.rfind("\n", 0, offset) + 1)
        self.call("Debugger.enable")
        self.call(
            "Debugger.setBreakpointByUrl",
            url=script_url,
            lineNumber=line,
            columnNumber=column,
            condition=CAPTURE,
        )

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def focus_terminal(self) -> None:
        self.evaluate("window.__shoalTerminal && window.__shoalTerminal.focus()")

    def terminal_text(self) -> str | None:
        """The terminal's visible rows, one line each; None before it has a byte."""
        value = self.evaluate(READ_SCREEN)
        return None if value is None else str(value)

    def type(self, text: str) -> None:
        """Keys into the focused terminal, as the user's typing would be."""
        self.call("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                text="\r" if kind == "keyDown" else "",
            )

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()


class Browser:
    """A headless Chromium with an empty profile of its own, stopped on exit."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self._pages: list[Page] = []

    def __enter__(self) -> Browser:
        path = chromium_path()
        if path is None:
            raise RuntimeError("no chromium on PATH")
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.profile / "chromium.log", "wb"),
            start_new_session=True,
        )
        port_file = self.profile / "DevToolsActivePort"
        wait_until(
            lambda: port_file.exists() and port_file.read_text().strip(), 30, "chromium's port"
        )
        self.port = int(port_file.read_text().split()[0])
        return self

    def tab(self) -> Page:
        """The blank tab Chromium opened (``navigate`` it once it is set up)."""
        targets = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10).read()
        )
        tab = next(t for t in targets if t.get("type") == "page")
        page = Page(tab["webSocketDebuggerUrl"])
        self._pages.append(page)
        page.call("Page.enable")
        return page

    def __exit__(self, *_: object) -> None:
        for page in self._pages:
            page.close()
        if self.proc is None:
            return
        # Its own session: the browser and its renderer, GPU and zygote processes go together.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
