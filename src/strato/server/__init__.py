"""The management server process: the composition root that wires API, services and engine."""
