"""The chips shoal builds for and flashes: mpy-cross's architecture, the offset of a
MicroPython image in flash, esptool's image chip id, and the heap a board has free.

Heap budgets: the free GC heap of MicroPython's GENERIC build without PSRAM after boot.
ESP32 is measured (~112 KB; shoal uses 110 KB, the emulated boards' heap). The others are
conservative figures for their SRAM; a board with PSRAM or another build passes --heap.
"""

from __future__ import annotations

from msgspec import Struct


class Target(Struct, frozen=True, kw_only=True):
    name: str
    march: str  # mpy-cross -march (bytecode loads anywhere; the header names the arch)
    offset: int  # where a MicroPython .bin goes in flash
    image_chip_id: int  # esptool's ESP_IMAGE chip id in the image's extended header
    heap_bytes: int  # free heap after boot (budget)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="esp32", march="xtensawin", offset=0x1000, image_chip_id=0, heap_bytes=110 * 1024
        ),
        Target(
            name="esp32s2", march="xtensawin", offset=0x1000, image_chip_id=2, heap_bytes=110 * 1024
        ),
        Target(
            name="esp32s3", march="xtensawin", offset=0x0, image_chip_id=9, heap_bytes=150 * 1024
        ),
        Target(name="esp32c3", march="rv32imc", offset=0x0, image_chip_id=5, heap_bytes=150 * 1024),
        Target(
            name="esp32c6", march="rv32imc", offset=0x0, image_chip_id=13, heap_bytes=150 * 1024
        ),
    )
}
CHIP_NAMES = {t.image_chip_id: t.name for t in TARGETS.values()}


def parse_size(text: str) -> int:
    """``110K``, ``2M`` or a number of bytes."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise ValueError(f"{text!r} is not a size (e.g. 110K, 2M, 65536)")
    return int(digits) * scale
