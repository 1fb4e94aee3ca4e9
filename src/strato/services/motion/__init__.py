"""Storage motion: volumes between pools, VMs between hosts, live or offline (issue 10)."""
