"""Stand-in for MicroPython's ``network`` on an emulated board: a WLAN whose link state is
the emulator's radio (the file ``radio`` in the board's directory: "1" on, "0" off).

The TCP path itself is cut by the emulator's relay; this only lets the firmware see what
a chip's WiFi driver would report. RSSI wanders a little around -58 dBm, as a real one does.

A fault the emulator can inject (its ``crash`` op): while the file ``crash`` exists, the
next ``isconnected()`` removes it and raises, as a driver fault or a firmware bug would,
so the firmware's own handler runs (on firmware/esp32: traceback, then machine.reset()).
"""

import os

STA_IF = 0
AP_IF = 1
STAT_GOT_IP = 1010

_RADIO = "radio"
_CRASH = "crash"
_rssi = [-58]


def _radio_on():
    try:
        with open(_RADIO) as f:
            return f.read(1) != "0"
    except OSError:
        return True  # no control file: a board on a bench, always in range


def _crash_if_asked():
    try:
        os.remove(_CRASH)  # one shot: absent (the usual case) costs one failed syscall
    except OSError:
        return
    raise RuntimeError("wifi driver fault (injected by the board emulator)")


class WLAN:
    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._wanted = False

    def active(self, on=None):
        if on is not None:
            self._active = bool(on)
        return self._active

    def connect(self, ssid=None, password=None, **kwargs):
        self._wanted = True

    def disconnect(self):
        self._wanted = False

    def isconnected(self):
        _crash_if_asked()
        return self._active and self._wanted and _radio_on()

    def status(self, param=None):
        if param == "rssi":
            if not self.isconnected():
                raise OSError(-1)  # some firmware raises while not associated
            r = _rssi[0] + (1 if (id(self) >> 4) & 1 else -1)
            _rssi[0] = -64 if r < -64 else -52 if r > -52 else r
            return _rssi[0]
        return STAT_GOT_IP if self.isconnected() else 0

    def ifconfig(self, config=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kwargs):
        if args == ("mac",):
            return b"\x02\x00\x00\x00\x00\x01"
        return None
