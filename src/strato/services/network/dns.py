"""A network's DNS, as CloudStack's virtual router gives it: the guests find each other by VM name (and
name.networkdomain), other names are asked of the zone's DNS server. The domain is the network's
`networkdomain`; without one given, the owner account's, then its domain's (up the tree), else
CloudStack's generated `cs<account>cloud.internal` (guest.domain.suffix "cloud.internal")."""

from __future__ import annotations

import contextlib
import ipaddress
import re

from sqlalchemy.orm import Session

from strato.db.models import Account, Domain, Network, Zone
from strato.errors import InvalidParameter
from strato.protocol.messages import DnsSpec
from strato.services.network import offerings

GUEST_DOMAIN_SUFFIX = "cloud.internal"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_domain(value: str, param: str = "networkdomain") -> str:
    """A DNS domain name (labels of letters, digits and inner hyphens, 253 characters at most), lower-cased."""
    name = value.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidParameter(
            f"Parameter {param}: {value!r} is not a domain name (labels of letters, digits and hyphens, "
            "each 1-63 characters, not starting or ending with a hyphen)"
        )
    return name


def hostname(vm_name: str) -> str | None:
    """The VM's name as a DNS label, or None when it is none (such a VM gets DHCP but no DNS name)."""
    name = vm_name.lower()
    return name if _LABEL.match(name) else None


def default_domain(session: Session, account: Account) -> str:
    if account.network_domain:
        return account.network_domain
    domain = session.get(Domain, account.domain_id)
    while domain is not None:
        if domain.network_domain:
            return domain.network_domain
        domain = session.get(Domain, domain.parent_id) if domain.parent_id else None
    return f"cs{account.id.replace('-', '')[:8]}{GUEST_DOMAIN_SUFFIX}"


def network_domain(session: Session, network: Network) -> str:
    if network.network_domain:
        return network.network_domain
    account = session.get(Account, network.account_id)
    return default_domain(session, account) if account is not None else f"cs{GUEST_DOMAIN_SUFFIX}"


def has_dns(session: Session, network: Network) -> bool:
    offering = offerings.find(session, network.network_offering_id)
    return offering is not None and "Dns" in offering.services


def dns_spec(session: Session, network: Network) -> DnsSpec | None:
    """What the router answers: None on an offering without the Dns service (DHCP only)."""
    if not has_dns(session, network):
        return None
    zone = session.get(Zone, network.zone_id)
    upstream = []
    if zone is not None and zone.dns1:
        with contextlib.suppress(ValueError):  # not an address: nothing to forward to
            upstream.append(str(ipaddress.ip_address(zone.dns1.strip())))
    return DnsSpec(domain=network_domain(session, network), upstream=upstream)
