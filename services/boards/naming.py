"""Board ids: ``board-01`` ... (node ids of the protocol: lower case, digits, "-")."""


def board_id(index: int, prefix: str = "board") -> str:
    """The id of the board at ``index`` (0-based) of an emulator's fleet."""
    return f"{prefix}-{index + 1:02d}"
