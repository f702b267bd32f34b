"""Firmware: the node core shared by ESP32 nodes and the simulated fleet."""
