"""One emulated board: its MicroPython process, its radio (a TCP relay to the broker) and
its console output, kept bounded.

States: ``running``; ``rebooting`` (it exited, by machine.reset() or a crash, or was
reset, and boots again after reboot_delay_ms); ``powered-off`` (power_off: SIGKILL, and it
stays off).

A power cut must look to the broker as a real one does: nothing. SIGKILL makes the kernel
close the board's socket with a FIN, which a board without power never sends, so the
radio relay holds the broker's side open and silent until the broker's keepalive gives
up (and publishes the board's will). Radio off is the same silence without the kill: the
board sees its link go (its socket reset, its WLAN disconnected) and keeps running.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from shoal.services.runtime.tcp_proxy import TcpProxy

from . import layout


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGKILL when the emulator dies, however it
    dies, so no board outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


LOG_MAX_BYTES = 1 << 20  # the console log starts over beyond this
TAIL_LINES = 20
LINE_MAX = 400


class Board:
    def __init__(self, node_id: str, root: Path, broker: tuple[str, int], radio_port: int) -> None:
        self.node_id = node_id
        self.root = root
        self.dir: Path | None = None
        self.radio = TcpProxy(broker, radio_port, name=f"radio-{node_id}").start()
        self.radio.hold_on_close(True)  # a killed board's FIN never reaches the broker
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "stopped"
        self.radio_on = True
        self.boots = 0
        self.restarts = 0
        self.memory_errors = 0
        self.lines = 0
        self.status = ""  # the firmware's last status line
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.reboot_at: float | None = None
        self._partial = b""
        self._log: Any = None

    # --- life ---------------------------------------------------------------------------

    def start(self, overrides: dict[str, Any], heap: str) -> int:
        """Boot (a new boot: the firmware draws a new boot_id); returns the output fd."""
        self.dir = layout.make_board_dir(self.root, self.node_id, overrides)
        layout.set_radio(self.dir, self.radio_on)
        if self._log is None:
            self._log = open(self.dir / "console.log", "ab")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            layout.argv(heap),
            cwd=self.dir,
            env=layout.env(self.dir),
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.state = "running"
        self.boots += 1
        self.reboot_at = None
        return self.proc.stdout.fileno()

    def exited(self) -> int | None:
        """The exit code if the process has ended (once), else None."""
        if self.proc is None or self.state != "running":
            return None
        code = self.proc.poll()
        if code is None:
            return None
        self.read()
        self._reap()
        return code

    def power_off(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self._reap()
        self.state = "powered-off"
        self.reboot_at = None

    def hard_reset(self, delay_s: float) -> None:
        """The reset button (or a watchdog): off at once, as a power cut, and a new boot
        after delay_s."""
        self.power_off()
        self.state = "rebooting"
        self.restarts += 1
        self.reboot_at = time.monotonic() + delay_s

    def crash(self) -> bool:
        """Ask the network stand-in to raise inside the firmware (once); False if off."""
        if self.state != "running" or self.dir is None:
            return False
        layout.ask_crash(self.dir)
        return True

    def set_radio(self, on: bool) -> None:
        self.radio_on = on
        if self.dir is not None:
            layout.set_radio(self.dir, on)
        if on:
            self.radio.heal()
        else:
            self.radio.cut(None, hold=True)

    def close(self) -> None:
        """Stop the board (SIGTERM, then SIGKILL) and its radio."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()
        self.radio.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    # --- output -------------------------------------------------------------------------

    def fd(self) -> int | None:
        if self.proc is None or self.proc.stdout is None:
            return None
        return self.proc.stdout.fileno()

    def read(self) -> bool:
        """Read what the board printed; False at end of output."""
        if self.proc is None or self.proc.stdout is None:
            return False
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if self._log is not None:
            if self._log.tell() > LOG_MAX_BYTES:
                self._log.truncate(0)
                self._log.seek(0)
            self._log.write(data)
            self._log.flush()
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > LINE_MAX:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            line = raw[:LINE_MAX].decode("utf-8", "replace")
            self.lines += 1
            self.tail.append(line)
            if "MemoryError" in line:
                self.memory_errors += 1
            if line.startswith("shoal "):
                self.status = line
        return True

    def row(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "state": self.state,
            "pid": self.proc.pid if self.proc is not None else None,
            "radio": "on" if self.radio_on else "off",
            "boots": self.boots,
            "restarts": self.restarts,
            "memory_errors": self.memory_errors,
            "status": self.status,
            "dir": str(self.dir) if self.dir else None,
            "radio_port": self.radio.port,
            "connections": self.radio.connections(),
            "time": round(time.time(), 3),
        }
