"""``shoal firmware flash``: a MicroPython image onto a board with esptool 5's Python API.

detect the chip (esptool.cmds.detect_chip) -> check it against ``--chip`` and the image's
own chip id -> upload and run the stub -> attach the flash -> erase (if asked) -> write at
the chip's offset (0x1000 on ESP32 and ESP32-S2, 0x0 on S3, C3, C6) -> verify (esptool
checks the written data's MD5, then ``verify_flash`` compares the flash with the image) ->
hard reset. esptool's own output is kept (``FlashResult.log``) and its progress goes to a
callback, so the command prints a progress bar and one line per step, never esptool's.

The image is checked before any port is opened: it must exist and start with the ESP image
magic (0xE9); the extended header's chip id (byte 12) names the chip it is for.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from msgspec import Struct

from .targets import CHIP_NAMES, TARGETS

ESP_IMAGE_MAGIC = 0xE9
CONNECT_BAUD = 115_200  # the ROM bootloader's; --baud is set once the stub runs

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class FlashError(Exception):
    """Flashing failed; ``kind`` is one of "image", "port", "chip", "flash"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class FlashResult(Struct, frozen=True, kw_only=True):
    chip: str  # esp32, esp32s3, ...
    mac: str  # aa:bb:cc:dd:ee:ff
    offset: int
    size: int
    erased: bool
    seconds: float
    log: list[str]


def read_image(path: Path) -> tuple[bytes, str | None]:
    """The image's bytes and the chip it is for (None: a chip id shoal does not know)."""
    if not path.exists():
        raise FlashError("image", f"image {path}: no such file")
    if not path.is_file():
        raise FlashError("image", f"image {path}: not a file")
    data = path.read_bytes()
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        raise FlashError(
            "image", f"image {path}: not an ESP firmware image (no 0xE9 magic at its start)"
        )
    (chip_id,) = struct.unpack_from("<H", data, 12)
    return data, CHIP_NAMES.get(chip_id)


def chip_key(chip_name: str) -> str:
    """esptool's CHIP_NAME ('ESP32-S3') as shoal's target name ('esp32s3')."""
    return chip_name.lower().replace("-", "")


def flash(
    port: str,
    image: Path,
    chip: str = "auto",
    *,
    erase: bool = False,
    baud: int = 460_800,
    progress: Progress | None = None,
    step: Callable[[str], None] | None = None,
) -> FlashResult:
    """Write ``image`` to the board on ``port`` (a device path or ``socket://HOST:PORT``)."""
    import esptool.cmds as cmds
    from esptool.util import FatalError
    from serial import SerialException

    say = step or (lambda _text: None)
    data, image_chip = read_image(image)
    if chip != "auto" and image_chip is not None and image_chip != chip:
        raise FlashError("chip", f"image {image} is for {image_chip}, not {chip}")
    started = time.monotonic()
    with _esptool_log(progress) as lines:
        try:
            esp = cmds.detect_chip(port, CONNECT_BAUD, connect_attempts=3)
        except (FatalError, SerialException, OSError) as err:
            raise FlashError("port", f"no board answers on {port}: {_one_line(err)}") from None
        try:
            found = chip_key(esp.CHIP_NAME)
            if chip != "auto" and found != chip:
                raise FlashError("chip", f"the board on {port} is an {found}, not an {chip}")
            if image_chip is not None and image_chip != found:
                raise FlashError(
                    "chip", f"image {image} is for {image_chip}, the board is an {found}"
                )
            target = TARGETS.get(found)
            if target is None:
                raise FlashError(
                    "chip", f"the board on {port} is an {found}: shoal has no target for it"
                )
            mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            say(f"connected: {found} {mac} on {port}")
            esp = cmds.run_stub(esp)
            if baud != CONNECT_BAUD:
                esp.change_baud(baud)
            cmds.attach_flash(esp)
            if erase:
                say("erasing the flash")
                cmds.erase_flash(esp)
            say(f"writing {len(data):,} B at {target.offset:#x}")
            cmds.write_flash(esp, [(target.offset, data)])
            say("verifying")
            cmds.verify_flash(esp, [(target.offset, data)])
            cmds.reset_chip(esp, "hard-reset")
        except FlashError:
            raise
        except Exception as err:  # FatalError, SerialException, OSError, or esptool's own bug
            raise FlashError("flash", f"flashing {port} failed: {_one_line(err)}") from None
        finally:
            _close(esp)
    return FlashResult(
        chip=found,
        mac=mac,
        offset=target.offset,
        size=len(data),
        erased=erase,
        seconds=round(time.monotonic() - started, 3),
        log=lines,
    )


def _close(esp: Any) -> None:
    port = getattr(esp, "_port", None)
    if port is not None:
        with suppress(Exception):  # closing a port that already failed
            port.close()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


@contextmanager
def _esptool_log(progress: Progress | None) -> Iterator[list[str]]:
    """esptool's logger replaced for the call: its lines kept, its progress bar a callback."""
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    lines: list[str] = []

    class Quiet(TemplateLogger):
        def print(self, *args: Any, **kwargs: Any) -> None:
            text = " ".join(str(a) for a in args).strip()
            if text:
                lines.append(text)

        def note(self, message: str) -> None:
            lines.append(f"note: {message}")

        def warning(self, message: str) -> None:
            lines.append(f"warning: {message}")

        def error(self, message: str) -> None:
            lines.append(f"error: {message}")

        def stage(self, finish: bool = False) -> None:
            pass

        def progress_bar(
            self,
            cur_iter: int,
            total_iters: int,
            prefix: str = "",
            suffix: str = "",
            bar_length: int = 30,
        ) -> None:
            if progress is not None and prefix.startswith("Writing"):
                progress(cur_iter, total_iters)

        def set_verbosity(self, verbosity: str) -> None:
            pass

    saved = EspLog.instance
    log.set_logger(Quiet())
    try:
        yield lines
    finally:
        EspLog.instance = saved
