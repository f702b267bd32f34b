"""The boards this shim speaks for: each one's current boot, what it last sent, when.

Bounded: at most ``max_boards`` entries (a new id beyond that is refused), and a board
silent for ``forget_after_s`` is forgotten. The table decides whether a will still stands
for a board's current boot.
"""

from __future__ import annotations

from typing import Any

# Earlier boot ids remembered per board: a late message of one of them does not make it
# current again (as the relay does).
PREVIOUS_BOOTS_KEPT = 4


class Board:
    __slots__ = ("boot_id", "high_seq", "last_seen", "left", "msgs", "node_id", "prev_boots")

    def __init__(self, node_id: str, boot_id: int, now: float) -> None:
        self.node_id = node_id
        self.boot_id = boot_id
        self.prev_boots: tuple[int, ...] = ()
        self.high_seq = -1  # highest seq of the current boot seen
        self.last_seen = now
        self.msgs = 0
        self.left = False  # its last message was a goodbye (its own, or its will's)


class Boards:
    def __init__(self, max_boards: int, forget_after_s: float) -> None:
        self.max_boards = max_boards
        self.forget_after_s = forget_after_s
        self.table: dict[str, Board] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.table

    def seen(
        self, node_id: str, boot_id: int, seq: int | None, now: float, goodbye: bool = False
    ) -> bool:
        """Note a message the board sent (a task message has no seq); False if the board is
        new and the table is full."""
        board = self.table.get(node_id)
        if board is None:
            if len(self.table) >= self.max_boards:
                return False
            board = self.table[node_id] = Board(node_id, boot_id, now)
        if boot_id != board.boot_id:
            if boot_id in board.prev_boots:
                return True  # a late message of an earlier boot: it changes nothing here
            board.prev_boots = (board.boot_id, *board.prev_boots)[:PREVIOUS_BOOTS_KEPT]
            board.boot_id = boot_id
            board.high_seq = -1
        board.last_seen = now
        if seq is None:
            return True
        if seq > board.high_seq:
            board.high_seq = seq
            board.left = goodbye
        board.msgs += 1
        return True

    def will_verdict(self, node_id: str, boot_id: int, seq: int, window: int) -> str:
        """What a will of (node_id, boot_id) with reserved seq is worth:

        - ``ok``: it is the board's current boot: the shim sends the goodbye;
        - ``unknown``: no such board here (never seen, or forgotten);
        - ``stale``: a will of an earlier boot (the board has rebooted since);
        - ``too_old``: the reserved seq is below the relay's de-duplication window
          (``window`` seqs under the highest seen), which would refuse the goodbye as
          stale: the board has sent ``window`` or more messages since it connected.
        """
        board = self.table.get(node_id)
        if board is None:
            return "unknown"
        if boot_id != board.boot_id:
            return "stale"
        if seq <= board.high_seq - window:
            return "too_old"
        return "ok"

    def mark_left(self, node_id: str) -> None:
        board = self.table.get(node_id)
        if board is not None:
            board.left = True

    def forget_silent(self, now: float) -> int:
        cutoff = now - self.forget_after_s
        silent = [n for n, b in self.table.items() if b.last_seen < cutoff]
        for node_id in silent:
            del self.table[node_id]
        return len(silent)

    def rows(self, now: float) -> list[dict[str, Any]]:
        """For op ``boards``: one row per board, by node id."""
        return [
            {
                "node_id": b.node_id,
                "boot_id": b.boot_id,
                "last_seq": b.high_seq,
                "age_ms": int((now - b.last_seen) * 1000),
                "msgs": b.msgs,
                "left": b.left,
                "via": "mqtt",
            }
            for b in sorted(self.table.values(), key=lambda b: b.node_id)
        ]
