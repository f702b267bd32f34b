"""The scenario library shipped with shoal (scenarios/*.toml, package data in a wheel), and
scenario names: `shoal chaos run node-crash` finds scenarios/node-crash.toml wherever shoal
is installed."""

from __future__ import annotations

from pathlib import Path

# services/chaos/library.py -> the folder holding services/ and scenarios/: the checkout,
# or site-packages/shoal in a wheel install (setup.py ships scenarios/ there).
LIBRARY_DIR = Path(__file__).resolve().parents[2] / "scenarios"


def library() -> list[Path]:
    """Every shipped scenario file, by name."""
    return sorted(LIBRARY_DIR.glob("*.toml"))


def resolve(name_or_path: str | Path) -> Path:
    """A path as given when it names a file; else a library scenario of that name (with or
    without .toml); else the path as given, so that reading it says what is wrong."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) > 1:
        return path
    named = LIBRARY_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    return named if named.exists() else path
