"""The operator's actions on a node (tui/model.py ACTIONS): their keys, for the screens
that show nodes (the nodes view and the node detail)."""

from __future__ import annotations

from textual.binding import Binding

from .model import ACTIONS, FLOOD_TASKS

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
    "drain": "no new tasks for the node; its queued tasks move elsewhere",
    "crash": "the node stops at once, without a goodbye",
    "hang": "the node stops answering but keeps its connection",
    "reboot": "the node restarts with a new boot id",
    "flood": f"{FLOOD_TASKS} tasks arrive at once; those that do not fit are shed",
    "remove": "forget the node (it comes back when heard again)",
}

# Not in the footer (it would not fit 80 columns); the help lists them.
NODE_ACTION_BINDINGS = [
    Binding(ACTION_KEYS[action], f"node_action('{action}')", action, show=False)
    for action in ACTIONS
]
