"""Curve is on in every test, as it is by default: this process's clients and services use
a keys directory made once for the session (services/testing.py ``session_keys``), and each
``Cluster`` makes one of its own."""

import pytest

from shoal.services.testing import session_keys

session_keys()

# The longest files first: with a worker per file (`just test`), the suite should not end
# waiting on one that started last.
LONGEST_FIRST = (
    "test_chaos_library.py",
    "test_chaos_runs.py",
    "test_netns.py",
    "test_ota_boards.py",
    "test_tui_feed.py",
    "test_ten_thousand.py",
    "test_tui.py",
    "test_esp32_board.py",
    "test_chaos_safety.py",
    "test_sim_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
