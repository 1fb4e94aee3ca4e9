"""Service and disk offerings: the shapes users may ask for. Imports core, identity and infra."""
