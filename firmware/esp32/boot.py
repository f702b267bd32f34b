"""MicroPython runs boot.py first: the OTA guard (otaboot.py), which then runs main.py.

Never replaced over the air. On a chip, the port runs main.py after boot.py returns (after
Ctrl-C); main.py does not start the node a second time then.
"""

import otaboot

otaboot.run()
