"""The physical cloud: zones, pods, clusters, hosts, storage pools, capacity, the monitor's VM state sync
and periodic upkeep. Imports core and identity."""
