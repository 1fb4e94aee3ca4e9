"""Host networking of a simulated host: the wanted state is kept in memory, the kernel is untouched,
so the control plane runs on simulator hosts."""

from __future__ import annotations

from strato.agent.network.base import HostNetwork, bridge_name
from strato.protocol.messages import FirewallReport, FirewallSpec, NetworkReport, NetworkSpec, firewall_digest


class SimulatedNetwork(HostNetwork):
    def __init__(self) -> None:
        self.networks: dict[str, NetworkSpec] = {}
        self.taps: set[str] = set()
        self.firewall = FirewallSpec()

    async def ensure_network(self, network: NetworkSpec) -> NetworkReport:
        self.networks[network.id] = network
        self.taps.update(network.taps)
        return NetworkReport(
            id=network.id,
            bridge=bridge_name(network.id),
            taps=sorted(network.taps),
            peers=sorted(network.peers),
            router=network.router is not None,
        )

    async def remove_network(self, network_id: str) -> None:
        spec = self.networks.pop(network_id, None)
        if spec is not None:
            self.taps.difference_update(spec.taps)

    async def remove_taps(self, taps: list[str]) -> None:
        self.taps.difference_update(taps)

    async def carried(self) -> list[str]:
        return sorted(self.networks)

    async def sync_firewall(self, firewall: FirewallSpec) -> FirewallReport:
        self.firewall = firewall
        return FirewallReport(digest=firewall_digest(firewall), nics=len(firewall.nics))

    async def firewall_state(self) -> str:
        return firewall_digest(self.firewall)
