"""Tiny-data builders shared by the test suites (see builders.py)."""
