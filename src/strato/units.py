"""Sizes in bytes, shared by every layer (the API speaks GiB, the database and agents bytes)."""

from __future__ import annotations

MIB = 1024**2
GIB = 1024**3
