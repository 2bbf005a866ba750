"""Helpers for tests/test_launcher.py: SSH hosts made on this machine for the Ray launcher."""
