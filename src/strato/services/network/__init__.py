"""Guest networking's model: physical networks, offerings, guest networks, NICs and their addresses,
and the wanted state of each network on the hosts that carry it (sent to agent/network)."""
