"""Stand-in for MicroPython's ``machine`` on an emulated board.

``reset()`` ends the process with exit code 75 (EX_TEMPFAIL), which the emulator takes
for a reboot: it starts the board again, a new boot. ``unique_id()`` is stable per board
(from its directory name). The rest of ``machine`` is not used by the firmware.
"""

import sys

RESET_EXIT_CODE = 75
PWRON_RESET = 1
SOFT_RESET = 5


def reset():
    print("machine.reset(): rebooting")
    sys.exit(RESET_EXIT_CODE)


def soft_reset():
    reset()


def reset_cause():
    return PWRON_RESET


def unique_id():
    try:
        import os

        name = os.getcwd()
    except (ImportError, AttributeError, OSError):
        name = "board"
    h = 5381
    for ch in name:
        h = (h * 33 + ord(ch)) & 0xFFFFFFFF
    return bytes([h & 255, (h >> 8) & 255, (h >> 16) & 255, (h >> 24) & 255, 0, 1])


def freq(hz=None):
    return 160000000


def idle():
    pass
