"""Storage motion: volumes between pools, VMs with their disks between hosts, live or offline (issue 10)."""
