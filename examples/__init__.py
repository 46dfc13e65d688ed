"""Runnable examples against the reference service in ``worker/``."""
