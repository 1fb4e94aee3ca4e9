"""Storage motion: volumes (and, later, VMs with their disks) moving between pools and hosts."""
