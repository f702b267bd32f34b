"""The node core: one implementation for ESP32 firmware and the simulated fleet.

MicroPython-compatible: no CPython-only imports, relative imports only, and no randomness,
clock or I/O of its own. Those come from a small hardware interface (see node.py), so the
same code runs on a board, in a simulator, and deterministically under test.
"""
