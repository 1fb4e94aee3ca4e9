"""agent/drivers layer of Strato (see docs/ARCHITECTURE.md)."""
