"""Security groups: createSecurityGroup, listSecurityGroups, deleteSecurityGroup, and the rules
(authorize/revoke, ingress and egress). A rule change is pushed to the hosts of every zone with
security groups before the answer (a host that does not answer gets it from the monitor), so it
applies to running VMs at once; the async commands answer a completed job, as the network ones do."""

from __future__ import annotations

from typing import Any

from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import Kind, api
from strato.api.views_secgroups import security_group
from strato.db.models.secgroups import EGRESS, INGRESS
from strato.services.core import jobs
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.network import firewall, secgroups

OWNER = (
    Param("account", T.STRING, "The account of the security group (admins); with domainid", max_length=255),
    Param("domainid", T.UUID, "The domain of the account"),
)


@api(
    "createSecurityGroup",
    "Creates a security group",
    response="securitygroup",
    event="SG.CREATE",
    params=(
        Param("name", T.STRING, "The name of the security group", required=True, max_length=255),
        Param("description", T.STRING, "The description of the security group", max_length=4096),
        *OWNER,
    ),
)
def create_security_group(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return security_group(ctx.session, secgroups.create_group(ctx, args))


@api(
    "listSecurityGroups",
    "Lists security groups (each account's default group included)",
    kind=Kind.LIST,
    response="securitygroup",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the security group"),
        Param("securitygroupname", T.STRING, "The name of the security group", max_length=255),
        Param("virtualmachineid", T.UUID, "The groups of this VM"),
    ),
)
def list_security_groups(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = secgroups.list_groups(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda g: security_group(ctx.session, g)), total)


@api(
    "deleteSecurityGroup",
    "Deletes a security group (not the default group, nor one in use)",
    kind=Kind.SUCCESS,
    event="SG.DELETE",
    params=(
        Param("id", T.UUID, "The ID of the security group"),
        Param("name", T.STRING, "The name of the security group (instead of id)", max_length=255),
        *OWNER,
    ),
)
def delete_security_group(ctx: CallContext, args: dict[str, Any]) -> None:
    secgroups.delete_group(ctx, args)


def _rule_params(direction: str) -> tuple[Param, ...]:
    peer = "source" if direction == INGRESS else "destination"
    return (
        Param("securitygroupid", T.UUID, "The ID of the security group"),
        Param("securitygroupname", T.STRING, "The name of the security group (instead of the id)", max_length=255),
        Param("protocol", T.STRING, "TCP, UDP, ICMP or ALL", required=True, max_length=16),
        Param("startport", T.INTEGER, "The first port (TCP, UDP)"),
        Param("endport", T.INTEGER, "The last port (TCP, UDP)"),
        Param("icmptype", T.INTEGER, "The ICMP type (-1: any)"),
        Param("icmpcode", T.INTEGER, "The ICMP code (-1: any)"),
        Param("cidrlist", T.LIST, f"The {peer} CIDRs"),
        Param("usersecuritygrouplist", T.MAP, f"The {peer} groups: account and group", max_length=1024),
        *OWNER,
    )


def _authorize(ctx: CallContext, args: dict[str, Any], cmd: str, direction: str) -> AsyncStarted:
    group, made = secgroups.authorize(ctx, args, direction)
    firewall.push(firewall.sync_calls(ctx.session))
    view = security_group(ctx.session, group, only=made)
    return AsyncStarted(jobs.completed(ctx, cmd, {"securitygroup": view}, "SecurityGroup"), group.id)


def _revoke(ctx: CallContext, args: dict[str, Any], cmd: str, direction: str) -> AsyncStarted:
    secgroups.revoke(ctx, args["id"], direction)
    firewall.push(firewall.sync_calls(ctx.session))
    return AsyncStarted(jobs.completed(ctx, cmd, {"success": True}, "SecurityGroup"))


@api(
    "authorizeSecurityGroupIngress",
    "Authorizes a security group's ingress rule (one per CIDR and per source group)",
    kind=Kind.ASYNC,
    event="SG.AUTH.INGRESS",
    params=_rule_params(INGRESS),
)
def authorize_ingress(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return _authorize(ctx, args, "authorizeSecurityGroupIngress", INGRESS)


@api(
    "authorizeSecurityGroupEgress",
    "Authorizes a security group's egress rule (one per CIDR and per destination group)",
    kind=Kind.ASYNC,
    event="SG.AUTH.EGRESS",
    params=_rule_params(EGRESS),
)
def authorize_egress(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return _authorize(ctx, args, "authorizeSecurityGroupEgress", EGRESS)


RULE_ID = Param("id", T.UUID, "The ID of the rule", required=True)


@api(
    "revokeSecurityGroupIngress",
    "Revokes an ingress rule",
    kind=Kind.ASYNC,
    event="SG.REVOKE.INGRESS",
    params=(RULE_ID,),
)
def revoke_ingress(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return _revoke(ctx, args, "revokeSecurityGroupIngress", INGRESS)


@api(
    "revokeSecurityGroupEgress",
    "Revokes an egress rule",
    kind=Kind.ASYNC,
    event="SG.REVOKE.EGRESS",
    params=(RULE_ID,),
)
def revoke_egress(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return _revoke(ctx, args, "revokeSecurityGroupEgress", EGRESS)
