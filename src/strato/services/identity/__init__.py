"""Domains, accounts, users, their passwords and API keys, and SSH key pairs. Imports only core."""
