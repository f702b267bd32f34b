"""The board emulator process: N boards, their radios, power and reboots, over ctl.

Ops (ctl, JSON args):

- ``boards`` {}: one row per board (node_id, state, pid, radio, boots, restarts,
  memory_errors, status: the firmware's last status line, dir, radio_port);
- ``power_off`` {node_id}: a power cut (SIGKILL; the broker sees silence, not a close);
- ``power_on`` {node_id}: boot it again (a new boot);
- ``radio`` {node_id, on}: the radio off (its TCP path cut, its WLAN disconnected) or on;
- ``reset`` {node_id}: the reset button: off at once (as a power cut), a new boot after
  ``reboot_delay_ms``;
- ``crash`` {node_id}: a fault inside the firmware (the WLAN stand-in raises once), so its
  own handler runs: on firmware/esp32 a traceback, and machine.reset() 5 s later.

Each returns the board's row (``boards`` returns them all). A board that exits by itself
(machine.reset(), exit 75, or a crash) boots again after ``reboot_delay_ms``; a
powered-off one stays off until power_on.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from shoal.services.broker.credentials import Credentials
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.ports import next_port
from shoal.services.runtime.service import CtlError, Service, parse_args

from .board import Board
from .layout import micropython
from .naming import board_id

CHECK_S = 0.1
RESET_EXIT_CODE = 75  # standins/machine.py


class NodeArgs(msgspec.Struct, forbid_unknown_fields=True):
    node_id: str


class RadioArgs(msgspec.Struct, forbid_unknown_fields=True):
    node_id: str
    on: bool


class BoardEmulator(Service):
    """Usage: ``BoardEmulator(load_config()).run()``, or ``shoal run boards``."""

    name = "boards"

    def __init__(
        self, config: ShoalConfig, count: int | None = None, workdir: str | None = None, **kw: Any
    ) -> None:
        super().__init__(config, **kw)
        self.cfg = config.boards
        self.count = self.cfg.count if count is None else count
        self._own_dir = workdir is None
        self.root = Path(workdir or tempfile.mkdtemp(prefix="shoal-boards-"))
        self.boards: dict[str, Board] = {}
        self.logins: dict[str, str] = {}  # node id -> its MQTT password
        self.ctl_ops["boards"] = self._op_boards
        self.ctl_ops["power_off"] = self._op_power_off
        self.ctl_ops["power_on"] = self._op_power_on
        self.ctl_ops["radio"] = self._op_radio
        self.ctl_ops["reset"] = self._op_reset
        self.ctl_ops["crash"] = self._op_crash

    def setup(self) -> None:
        micropython()  # fail at start, with the reason, rather than at every boot
        self.bus = self.bind("bus", zmq.PUB, self.cfg.bus)
        self.serve_ctl(self.cfg.ctl)
        broker = self.config.mqtt.broker_address()
        self.endpoints["broker"] = self.config.mqtt.broker
        credentials = Credentials(self.config.mqtt.credentials)
        for i in range(self.count):
            node_id = board_id(i, self.cfg.id_prefix)
            # Its own login, as a real board's deploy writes it (made on the first run).
            self.logins[node_id] = credentials.ensure(node_id)
            board = Board(node_id, self.root, broker, next_port())
            self.boards[node_id] = board
            self._boot(board)
        self.every(CHECK_S, self._check)
        self.log.info("boards_started", count=self.count, dir=str(self.root))

    def on_stop(self) -> None:
        for board in self.boards.values():
            board.close()
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters["boards"] = len(self.boards)
        counters["running"] = sum(b.state == "running" for b in self.boards.values())
        counters["memory_errors"] = sum(b.memory_errors for b in self.boards.values())
        counters["restarts"] = sum(b.restarts for b in self.boards.values())
        return counters

    # --- boards -------------------------------------------------------------------------

    def _overrides(self, board: Board) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
            "node_id": board.node_id,
            "wifi_ssid": "shoal-emulated",
            "wifi_password": "",
            "wifi_timeout_ms": 2000,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": board.radio.port,  # through its radio, to the broker
            "mqtt_keepalive_s": cfg.keepalive_s,
        }
        out["mqtt_user"] = board.node_id
        out["mqtt_password"] = self.logins[board.node_id]
        out.update(cfg.firmware)
        out.update(cfg.per_board.get(board.node_id, {}))
        return out

    def _boot(self, board: Board) -> None:
        fd = board.start(self._overrides(board), self.cfg.heap)
        self.watch_fd(fd, functools.partial(self._read, board))
        self.counters["boots"] += 1

    def _read(self, board: Board) -> None:
        fd = board.fd()
        if not board.read() and fd is not None:
            self.unwatch(fd)

    def _check(self) -> None:
        now = time.monotonic()
        for board in self.boards.values():
            fd = board.fd()
            code = board.exited()
            if code is not None:
                if fd is not None:
                    self.unwatch(fd)
                why = "reset" if code == RESET_EXIT_CODE else f"exit {code}"
                self.log.warning(
                    "board_exited", node=board.node_id, why=why, tail=list(board.tail)[-5:]
                )
                board.state = "rebooting"
                board.restarts += 1
                board.reboot_at = now + self.cfg.reboot_delay_ms / 1000
            if (
                board.state == "rebooting"
                and board.reboot_at is not None
                and now >= board.reboot_at
            ):
                self._boot(board)

    # --- ctl ----------------------------------------------------------------------------

    def _board(self, node_id: str) -> Board:
        board = self.boards.get(node_id)
        if board is None:
            raise CtlError(f"unknown board {node_id!r} (boards: {', '.join(self.boards)})")
        return board

    def _op_boards(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        return [b.row() for b in self.boards.values()]

    def _op_power_off(self, args: dict[str, Any]) -> dict[str, Any]:
        board = self._board(parse_args(args, NodeArgs).node_id)
        fd = board.fd()
        if fd is not None:
            self.unwatch(fd)
        board.power_off()
        self.counters["power_cuts"] += 1
        self.log.info("power_off", node=board.node_id)
        return board.row()

    def _op_power_on(self, args: dict[str, Any]) -> dict[str, Any]:
        board = self._board(parse_args(args, NodeArgs).node_id)
        if board.state == "running":
            return board.row()  # already on: nothing to do (a retried call is harmless)
        self._boot(board)
        self.log.info("power_on", node=board.node_id)
        return board.row()

    def _op_radio(self, args: dict[str, Any]) -> dict[str, Any]:
        a = parse_args(args, RadioArgs)
        board = self._board(a.node_id)
        board.set_radio(a.on)
        self.counters["radio_on" if a.on else "radio_off"] += 1
        self.log.info("radio", node=board.node_id, on=a.on)
        return board.row()

    def _op_reset(self, args: dict[str, Any]) -> dict[str, Any]:
        board = self._board(parse_args(args, NodeArgs).node_id)
        fd = board.fd()
        if fd is not None:
            self.unwatch(fd)
        board.hard_reset(self.cfg.reboot_delay_ms / 1000)
        self.counters["resets"] += 1
        self.log.info("reset", node=board.node_id)
        return board.row()

    def _op_crash(self, args: dict[str, Any]) -> dict[str, Any]:
        board = self._board(parse_args(args, NodeArgs).node_id)
        if not board.crash():
            raise CtlError(f"board {board.node_id} is {board.state}: nothing to crash")
        self.counters["crashes"] += 1
        self.log.info("crash", node=board.node_id)
        return board.row()
