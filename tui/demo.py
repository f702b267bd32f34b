"""The console on fixed data, without a cluster: ``python -m shoal.tui.demo``.

python -m shoal.tui.demo                 # 12 nodes in every state; values move each second
python -m shoal.tui.demo --nodes 1000    # how it feels at 1,000 nodes
python -m shoal.tui.demo --screenshot docs/console.svg   # the nodes view as SVG, then exit
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .app import ShoalConsole
from .fixtures import FixedSource

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"
SCREENSHOT_SIZE = (140, 22)


class DemoConsole(ShoalConsole):
    def __init__(
        self, source: FixedSource, tick_s: float, readonly: bool, scenarios_dir: Path | None
    ) -> None:
        super().__init__(source, readonly=readonly, scenarios_dir=scenarios_dir)
        self.fixed = source
        self.tick_s = tick_s

    def on_mount(self) -> None:  # after ShoalConsole.on_mount (Textual calls both)
        if self.tick_s > 0:
            self.set_interval(self.tick_s, self.fixed.tick)


async def screenshot(path: Path, nodes: int | None) -> None:
    app = ShoalConsole(FixedSource(n=nodes))
    async with app.run_test(size=SCREENSHOT_SIZE) as pilot:
        await pilot.pause()
        app.save_screenshot(path.name, path=str(path.parent or "."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", type=int, default=None, help="generated nodes (default: 12 fixed)"
    )
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between changes (0: none)")
    parser.add_argument("--readonly", action="store_true")
    parser.add_argument("--screenshot", type=Path, help="write the nodes view as SVG and exit")
    args = parser.parse_args()
    if args.screenshot is not None:
        asyncio.run(screenshot(args.screenshot, args.nodes))
        return
    source = FixedSource(n=args.nodes)
    scenarios = SCENARIOS_DIR if SCENARIOS_DIR.is_dir() else None
    DemoConsole(source, args.tick, readonly=args.readonly, scenarios_dir=scenarios).run()


if __name__ == "__main__":
    main()
