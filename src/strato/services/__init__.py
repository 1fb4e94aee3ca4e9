"""services layer of Strato (see docs/ARCHITECTURE.md)."""
