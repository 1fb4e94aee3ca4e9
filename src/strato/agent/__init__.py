"""agent layer of Strato (see docs/ARCHITECTURE.md)."""
