"""MicroPython stand-ins for what only a chip has; copied into each emulated board's path.

They stand in at the lowest level the firmware touches: the ``network`` module (WLAN) and
the ``machine`` module (reset, unique_id). Sockets, the MQTT client and everything above
are the real ones."""
