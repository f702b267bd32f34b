"""Putting shoal on a board: ``build`` (the board's files as .mpy with a manifest, refused
when they would not fit the target's heap), ``flash`` (a MicroPython image written with
esptool's Python API), ``deploy`` (the bundle and a generated config copied with mpremote).

It binds no socket and runs no service. It trusts the firmware files of this install and
the tools it runs (mpy-cross, the MicroPython unix port, esptool, mpremote); an image, a
port or a node id from the command line is checked before anything is written.
"""
