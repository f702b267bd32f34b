"""The board emulator (``shoal boards``, ``shoal run boards``): boards without hardware.

Each board is a process of the MicroPython unix port (``-X heapsize=`` bounds its heap as
an ESP32's is bounded) running the unchanged files of firmware/esp32, with stand-ins for
what only a chip has (standins/: ``network`` and ``machine``), over real TCP to the MQTT
broker. The radio is a TCP relay per board (runtime/tcp_proxy.py) and a control file the
``network`` stand-in reads: off cuts the board's traffic as losing WiFi does.

It binds ctl (ROUTER: boards, power_off, power_on, radio, reset, crash) and bus (PUB: its heartbeat with
counters), and one loopback TCP port per board (that board's radio). It trusts nothing a
board prints: each output line is only counted and kept, bounded. Ctl args are checked.

- ``service``: the Boards process; ``board``: one board's process, radio and log;
- ``layout``: the firmware and stand-in files, the board's directory, the interpreter;
- ``naming``: board ids.
"""

from .service import BoardEmulator

__all__ = ["BoardEmulator"]
