"""Reusable test helpers (agent processes, ...)."""
