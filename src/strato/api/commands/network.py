"""Physical networks, network service providers and offerings, guest networks and NICs.

CloudStack declares several of these async; the work of most is a few rows, done in the request and
answered as a completed job; restartNetwork and deleteNetwork call the hosts, in real jobs."""

from __future__ import annotations

from typing import Any

from strato.api import views_network as v
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, paginate_rows
from strato.services.network import network_jobs, networks, nic_plug, nics, offerings, physical


def _done(ctx: CallContext, cmd: str, key: str, obj: dict[str, Any], kind: str) -> AsyncStarted:
    return AsyncStarted(jobs.completed(ctx, cmd, {key: obj}, kind), obj.get("id"))


PN_ID = Param("id", T.UUID, "The ID of the physical network", required=True)
VLAN_RANGE = Param("vlan", T.STRING, "The VLAN id / VNI ranges of the physical network, e.g. 100-200", max_length=255)


@api(
    "createPhysicalNetwork",
    "Creates a physical network",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="PHYSICAL.NETWORK.CREATE",
    params=(
        Param("zoneid", T.UUID, "The zone ID", required=True),
        Param("name", T.STRING, "The name of the physical network", required=True, max_length=255),
        Param("isolationmethods", T.STRING, "The isolation method: VXLAN (default) or VLAN", max_length=255),
        VLAN_RANGE,
        Param("tags", T.STRING, "Tag for the physical network", max_length=255),
        Param("broadcastdomainrange", T.STRING, "ZONE (the only one)", max_length=32),
        Param("networkspeed", T.STRING, "The speed of the physical network", max_length=32),
    ),
)
def create_physical_network(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    row = physical.create_physical_network(ctx, args)
    return _done(
        ctx, "createPhysicalNetwork", "physicalnetwork", v.physical_network(ctx.session, row), "PhysicalNetwork"
    )


@api(
    "updatePhysicalNetwork",
    "Updates a physical network",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="PHYSICAL.NETWORK.UPDATE",
    params=(
        PN_ID,
        Param("state", T.STRING, "Enabled or Disabled", choices=("Enabled", "Disabled")),
        VLAN_RANGE,
        Param("tags", T.STRING, "Tag for the physical network", max_length=255),
        Param("networkspeed", T.STRING, "The speed of the physical network", max_length=32),
    ),
)
def update_physical_network(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    row = physical.update_physical_network(ctx, args)
    return _done(
        ctx, "updatePhysicalNetwork", "physicalnetwork", v.physical_network(ctx.session, row), "PhysicalNetwork"
    )


@api(
    "listPhysicalNetworks",
    "Lists physical networks",
    kind=Kind.LIST,
    response="physicalnetwork",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "The ID of the physical network"),
        Param("zoneid", T.UUID, "The zone ID"),
        Param("name", T.STRING, "The name of the physical network", max_length=255),
    ),
)
def list_physical_networks(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = physical.list_physical_networks(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.physical_network(ctx.session, r)), total)


@api(
    "deletePhysicalNetwork",
    "Deletes a physical network",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="PHYSICAL.NETWORK.DELETE",
    params=(PN_ID,),
)
def delete_physical_network(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    physical.delete_physical_network(ctx, args["id"])
    return AsyncStarted(jobs.completed(ctx, "deletePhysicalNetwork", {"success": True}, "PhysicalNetwork"))


@api(
    "addTrafficType",
    "Adds a traffic type to a physical network",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="TRAFFIC.TYPE.CREATE",
    params=(
        Param("physicalnetworkid", T.UUID, "The physical network ID", required=True),
        Param(
            "traffictype", T.STRING, "Guest, Management, Public or Storage", required=True,
            choices=physical.TRAFFIC_TYPES,
        ),
        Param("kvmnetworklabel", T.STRING, "The network name label of the KVM hosts", max_length=255),
    ),
)  # fmt: skip
def add_traffic_type(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    entry = physical.add_traffic_type(ctx, args)
    return _done(ctx, "addTrafficType", "traffictype", v.traffic_type(entry), "TrafficType")


@api(
    "listNetworkServiceProviders",
    "Lists network service providers of a physical network",
    kind=Kind.LIST,
    response="networkserviceprovider",
    access=ADMIN,
    params=(
        Param("physicalnetworkid", T.UUID, "The physical network ID"),
        Param("name", T.STRING, "The provider's name", max_length=255),
        Param("state", T.STRING, "The provider's state", max_length=32),
    ),
)
def list_providers(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, _ = physical.list_physical_networks(ctx, {"id": args.get("physicalnetworkid")}, Page())
    items = [v.provider(r) for r in rows]
    items = [i for i in items if args.get("name") in (None, i["name"]) and args.get("state") in (None, i["state"])]
    page_items, total = paginate_rows(items, Page.from_args(args))
    return Listing(page_items, total)


@api(
    "listNetworkOfferings",
    "Lists network offerings",
    kind=Kind.LIST,
    response="networkoffering",
    params=(
        Param("id", T.UUID, "The network offering ID"),
        Param("name", T.STRING, "The network offering name", max_length=255),
        Param("guestiptype", T.STRING, "Isolated or Shared", max_length=32),
        Param("state", T.STRING, "The state of the offering", max_length=32),
        Param("zoneid", T.UUID, "Offerings available in this zone"),
    ),
)
def list_network_offerings(ctx: CallContext, args: dict[str, Any]) -> Listing:
    offers = [
        o
        for o in offerings.all_offerings(ctx.session)
        if args.get("id") in (None, o.id)
        and args.get("name") in (None, o.name)
        and args.get("guestiptype") in (None, o.guest_ip_type)
        and str(args.get("state") or o.state).lower() == o.state.lower()
    ]
    items, total = paginate_rows([v.network_offering(o) for o in offers], Page.from_args(args))
    return Listing(items, total)


NET_ID = Param("id", T.UUID, "The ID of the network", required=True)


@api(
    "createNetwork",
    "Creates a network",
    response="network",
    event="NETWORK.CREATE",
    params=(
        Param("name", T.STRING, "The name of the network", required=True, max_length=255),
        Param("displaytext", T.STRING, "The display text of the network", max_length=4096),
        Param("networkofferingid", T.UUID, "The network offering ID", required=True),
        Param("zoneid", T.UUID, "The zone ID", required=True),
        Param("physicalnetworkid", T.UUID, "The physical network ID"),
        Param("gateway", T.STRING, "The gateway of the network", max_length=64),
        Param("netmask", T.STRING, "The netmask of the network", max_length=64),
        Param("startip", T.STRING, "The first address of the range VMs get theirs from", max_length=64),
        Param("endip", T.STRING, "The last address of that range", max_length=64),
        Param("vlan", T.STRING, "The VLAN id, on a VXLAN physical network the VNI", max_length=64),
        Param("networkdomain", T.STRING, "The DNS domain of the network's guests", max_length=253),
        Param("account", T.STRING, "The owner account (with domainid)", max_length=255),
        Param("domainid", T.UUID, "The owner's domain"),
    ),
)
def create_network(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return v.network(ctx.session, networks.create_network(ctx, args))


@api(
    "listNetworks",
    "Lists networks",
    kind=Kind.LIST,
    response="network",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the network"),
        Param("zoneid", T.UUID, "The zone ID"),
        Param("physicalnetworkid", T.UUID, "The physical network ID"),
        Param("type", T.STRING, "Isolated or Shared", max_length=32),
    ),
)
def list_networks(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = networks.list_networks(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.network(ctx.session, r)), total)


@api(
    "updateNetwork",
    "Updates a network",
    kind=Kind.ASYNC,
    event="NETWORK.UPDATE",
    params=(
        NET_ID,
        Param("name", T.STRING, "The new name", max_length=255),
        Param("displaytext", T.STRING, "The new display text", max_length=4096),
        Param("networkdomain", T.STRING, "The new DNS domain (the router answers it at once)", max_length=253),
    ),
)
def update_network(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    row, resend = networks.update_network(ctx, args)
    if resend:  # the router's dnsmasq takes the new domain: the restart job sends the wanted state
        params = network_jobs.NetworkParams(network_id=row.id)
        return AsyncStarted(jobs.submit_operation(ctx, network_jobs.RestartNetwork, params, "Network", row.id), row.id)
    return _done(ctx, "updateNetwork", "network", v.network(ctx.session, row), "Network")


@api(
    "restartNetwork",
    "Restarts a network: its wanted state is sent again to every host carrying it",
    kind=Kind.ASYNC,
    event="NETWORK.RESTART",
    params=(NET_ID, Param("cleanup", T.BOOLEAN, "Accepted; the router is re-made in place")),
)
def restart_network(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    row = networks.get_network(ctx, args["id"])
    params = network_jobs.NetworkParams(network_id=row.id)
    return AsyncStarted(jobs.submit_operation(ctx, network_jobs.RestartNetwork, params, "Network", row.id), row.id)


@api(
    "deleteNetwork",
    "Deletes a network (refused while VMs use it): removed from every host of its zone",
    kind=Kind.ASYNC,
    event="NETWORK.DELETE",
    params=(NET_ID, Param("forced", T.BOOLEAN, "Accepted; a network in use is refused all the same")),
)
def delete_network(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    row = networks.get_network(ctx, args["id"])
    params = network_jobs.NetworkParams(network_id=row.id)
    return AsyncStarted(jobs.submit_operation(ctx, network_jobs.DeleteNetwork, params, "Network", row.id), row.id)


@api(
    "listNics",
    "Lists the NICs of a VM",
    kind=Kind.LIST,
    response="nic",
    params=(
        Param("virtualmachineid", T.UUID, "The VM ID", required=True),
        Param("nicid", T.UUID, "The NIC ID"),
        Param("networkid", T.UUID, "The network ID"),
    ),
)
def list_nics(ctx: CallContext, args: dict[str, Any]) -> Listing:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    rows = [
        n
        for n in nics.vm_nics(ctx.session, vm.id)
        if args.get("nicid") in (None, n.id) and args.get("networkid") in (None, n.network_id)
    ]
    items, total = paginate_rows([v.nic(ctx.session, n) for n in rows], Page.from_args(args))
    return Listing(items, total)


def _vm_done(ctx: CallContext, cmd: str, vm_id: str) -> AsyncStarted:
    return AsyncStarted(jobs.completed(ctx, cmd, {"type": "virtualmachine", "id": vm_id}, "VirtualMachine"), vm_id)


VM_ID = Param("virtualmachineid", T.UUID, "The VM ID", required=True)
NIC_ID = Param("nicid", T.UUID, "The NIC ID", required=True)


@api(
    "addNicToVirtualMachine",
    "Adds a NIC on a network to a VM (its address chosen, or the one given): a stopped VM gets it at its "
    "next start, a running one has it hot-plugged",
    kind=Kind.ASYNC,
    event="NIC.CREATE",
    params=(
        VM_ID,
        Param("networkid", T.UUID, "The network of the new NIC", required=True),
        Param("ipaddress", T.STRING, "The NIC's address in the network", max_length=64),
    ),
)
def add_nic(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    if vm.state == "Running":
        return AsyncStarted(nic_plug.submit_add(ctx, vm, args["networkid"], args.get("ipaddress")), vm.id)
    network = networks.usable_network(ctx, args["networkid"], "networkid")
    networks.add_nic_to_vm(ctx, vm, network, args.get("ipaddress"))
    return _vm_done(ctx, "addNicToVirtualMachine", vm.id)


@api(
    "removeNicFromVirtualMachine",
    "Removes a NIC from a VM (not its default NIC while it has others), hot-unplugged from a running one",
    kind=Kind.ASYNC,
    event="NIC.DELETE",
    params=(VM_ID, NIC_ID),
)
def remove_nic(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    if vm.state == "Running":
        return AsyncStarted(nic_plug.submit_remove(ctx, vm, args["nicid"]), vm.id)
    networks.remove_nic_from_vm(ctx, vm, args["nicid"])
    return _vm_done(ctx, "removeNicFromVirtualMachine", vm.id)


@api(
    "updateDefaultNicForVirtualMachine",
    "Makes one NIC of a stopped or running VM its default (a running guest takes it at its next DHCP)",
    kind=Kind.ASYNC,
    event="NIC.UPDATE",
    params=(VM_ID, NIC_ID),
)
def update_default_nic(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    networks.set_default_nic(ctx, vm, args["nicid"])
    return _vm_done(ctx, "updateDefaultNicForVirtualMachine", vm.id)
