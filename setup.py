"""Packaging that pyproject.toml cannot say: the top-level folders become subpackages of
``shoal`` (protocol/ -> shoal.protocol, ...), and every package under them is found, not
listed by hand (a hand-made list once left shoal.services.chaos out of the wheel). The
scenario library and the board firmware are shipped as package data, so an installed
shoal runs `shoal chaos run node-crash` and deploys firmware without a checkout."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
TOPS = ("protocol", "services", "tui", "firmware", "bench", "scenarios")
SKIP = {"__pycache__", "build", "dist"}


def packages() -> list[str]:
    found = []
    for top in TOPS:
        for folder in [HERE / top, *sorted((HERE / top).rglob("*"))]:
            if not folder.is_dir() or SKIP & set(folder.relative_to(HERE).parts):
                continue
            if any(f.is_file() for f in folder.iterdir()):
                found.append("shoal." + ".".join(folder.relative_to(HERE).parts))
    return found


setup(
    packages=packages(),
    package_dir={f"shoal.{top}": top for top in TOPS},
    package_data={
        "shoal.tui": ["*.tcss"],  # the console's styles
        "shoal.scenarios": ["*.toml", "*.md"],  # the scenario library
        "shoal.firmware": ["*.md"],
        "shoal.firmware.esp32": ["*.py", "*.md"],  # the board's files, copied as they are
    },
)
