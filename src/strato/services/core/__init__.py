"""What every area shares: the call context, lookups, listing, states, limits, settings, access rules, tags,
events, job submission and the agents' clients. Imports no other area."""
