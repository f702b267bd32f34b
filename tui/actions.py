"""The operator's actions on a node (tui/model.py ACTIONS): their keys, for the screens
that show nodes (the nodes view and the node detail)."""

from __future__ import annotations

from textual.binding import Binding

from .model import ACTIONS, FLOOD_TASKS, GONE_STATES, NodeRow

UNDRAIN = "undrain"  # `d` on a drained node: new work may go there again
# Actions that need a node that is there: on a dead or left one they would do nothing.
NEEDS_LIVE = frozenset({"drain", "crash", "hang", "flood"})

ACTION_KEYS = {
    "drain": "d",
    "crash": "c",
    "hang": "h",
    "reboot": "b",
    "flood": "f",
    "remove": "x",
}
# What each does, for the confirmation and the help.
ACTION_TEXT = {
    "drain": "no new tasks for the node; its queued tasks move elsewhere (again: undrain)",
    UNDRAIN: "new tasks may go to the node again",
    "crash": "the node stops at once, without a goodbye",
    "hang": "the node stops answering but keeps its connection",
    "reboot": "the node restarts with a new boot id",
    "flood": f"{FLOOD_TASKS} tasks arrive at once; those that do not fit are shed",
    "remove": "forget a dead or left node, for every console (welcome again when heard)",
}

# Not in the footer (it would not fit 80 columns); the help lists them.
NODE_ACTION_BINDINGS = [
    Binding(ACTION_KEYS[action], f"node_action('{action}')", action, show=False)
    for action in ACTIONS
]


def verb_for(action: str, row: NodeRow | None) -> str:
    """The action as it applies to this row: drain on a drained node is undrain."""
    if action == "drain" and row is not None and row.drained:
        return UNDRAIN
    return action


def why_not(action: str, row: NodeRow | None, node_id: str) -> str | None:
    """Why an action makes no sense on this node now (None: it does), in the operator's
    words, before anything is asked or sent."""
    if row is None:
        return f"{node_id} is no longer in the cluster view"
    gone = row.state in GONE_STATES
    if action in NEEDS_LIVE and gone:
        return f"{node_id} is {row.state}: {action} needs a live node"
    if action == "remove" and not gone:
        return f"{node_id} is {row.state}: only a dead or left node can be removed"
    return None
