"""The virtual router's dnsmasq: its command line and the two files it re-reads on SIGHUP, built from the
RouterSpec alone (so the same spec gives the same files and options, and a changed option is seen by
comparing command lines).

DHCP: one static lease per NIC (`mac,ip[,hostname]`), nothing for anyone else. DNS, when the network's
offering has it: the guests' names (and name.domain) answered from a hosts file of the leases, the
domain kept local (a name of it that is no guest's is NXDOMAIN, never asked upstream), everything else
forwarded to the zone's DNS servers; the router's own address is the DNS server DHCP hands out. dnsmasq
never reads the host's /etc/hosts or /etc/resolv.conf."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from strato.protocol.messages import RouterSpec


def dhcp_hosts(router: RouterSpec) -> str:
    """The dhcp-hostsfile: a hostname only with DNS (it is what the guest is told its name is)."""
    lines = []
    for host in router.hosts:
        name = f",{host.hostname}" if router.dns is not None and host.hostname else ""
        lines.append(f"{host.mac},{host.ip}{name}\n")
    return "".join(lines)


def dns_hosts(router: RouterSpec) -> str:
    """The addn-hosts file: `ip name name.domain` per named lease (empty without DNS)."""
    if router.dns is None:
        return ""
    domain = router.dns.domain
    return "".join(f"{h.ip} {h.hostname} {h.hostname}.{domain}\n" for h in router.hosts if h.hostname)


def argv(state: Path, interface: str, router: RouterSpec) -> list[str]:
    net = ipaddress.ip_network(f"{router.gateway}/{router.prefix}", strict=False)
    out = [
        "dnsmasq",
        "--conf-file=/dev/null",
        f"--pid-file={state / 'dnsmasq.pid'}",
        f"--interface={interface}",
        "--bind-interfaces",
        "--except-interface=lo",
        "--no-hosts",
        "--no-resolv",
        "--user=root",
        "--dhcp-authoritative",
        f"--dhcp-range={net.network_address},static,{net.netmask},1h",
        f"--dhcp-hostsfile={state / 'dhcp-hosts'}",
        f"--dhcp-leasefile={state / 'leases'}",
        f"--dhcp-option=option:router,{router.gateway}",
        f"--dhcp-option=option:mtu,{router.mtu}",
        f"--log-facility={state / 'dnsmasq.log'}",
        "--log-dhcp",
    ]
    if router.dns is None:
        return [*out, "--port=0"]
    domain = router.dns.domain
    out += [
        "--port=53",
        f"--domain={domain}",
        f"--local=/{domain}/",
        f"--addn-hosts={state / 'dns-hosts'}",
        f"--dhcp-option=option:dns-server,{router.gateway}",
        f"--dhcp-option=option:domain-search,{domain}",
    ]
    return out + [f"--server={server}" for server in router.dns.upstream]


def write_if_changed(path: Path, text: str) -> bool:
    """Writes `text` unless the file holds it already; True when it changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
