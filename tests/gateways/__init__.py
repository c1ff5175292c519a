"""Emulated network SIM gateways (real HTTP/UDP on loopback) for driver, e2e and bench tests."""
