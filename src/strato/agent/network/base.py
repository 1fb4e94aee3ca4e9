"""The network role: what an agent's host networking serves (Role.NETWORK commands)."""

from __future__ import annotations

import abc
import hashlib

from strato.protocol.messages import FirewallReport, FirewallSpec, NetworkReport, NetworkSpec


def short_id(network_id: str) -> str:
    """Eight hex digits naming a network's devices (interface names are at most 15 characters)."""
    return hashlib.sha256(network_id.encode()).hexdigest()[:8]


def bridge_name(network_id: str) -> str:
    return f"sb-{short_id(network_id)}"


def vxlan_name(network_id: str) -> str:
    return f"sx-{short_id(network_id)}"


def veth_name(network_id: str) -> str:
    """The bridge's end of the veth that joins the router namespace."""
    return f"sv-{short_id(network_id)}"


def router_if_name(network_id: str) -> str:
    """The router namespace's end of that veth (it holds the gateway address)."""
    return f"sr-{short_id(network_id)}"


class HostNetwork(abc.ABC):
    """Guest networks on this host. Every method is idempotent: the server re-sends the whole wanted
    state of a network whenever it changes, and after an agent restart nothing is cut."""

    @abc.abstractmethod
    async def ensure_network(self, network: NetworkSpec) -> NetworkReport:
        """Make the network's bridge, tunnel, taps and (when given) router match `network`."""

    @abc.abstractmethod
    async def remove_network(self, network_id: str) -> None:
        """Remove everything of the network from this host (nothing there is fine)."""

    @abc.abstractmethod
    async def remove_taps(self, taps: list[str]) -> None:
        """Remove these NIC taps (absent ones are fine)."""

    @abc.abstractmethod
    async def carried(self) -> list[str]:
        """The ids of the networks this host has set up: the server removes those it deleted meanwhile
        (a host that was down when a network was deleted still has it)."""

    @abc.abstractmethod
    async def sync_firewall(self, firewall: FirewallSpec) -> FirewallReport:
        """Make the host's security-group filter exactly `firewall` (one transaction)."""

    @abc.abstractmethod
    async def firewall_state(self) -> str:
        """The digest of the filter in place (firewall_digest of what was applied; "" when it was lost,
        e.g. the kernel's tables were flushed): the server re-sends when it wants another."""
