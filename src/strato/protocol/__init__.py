"""Typed agent protocol shared by the server and the agents, and the agent client."""
