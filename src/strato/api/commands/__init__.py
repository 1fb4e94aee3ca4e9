"""api/commands layer of Strato (see docs/ARCHITECTURE.md)."""
