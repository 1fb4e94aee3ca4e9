"""SSH key pairs and account resource limits."""

from __future__ import annotations

from typing import Any

from strato.api import views_compute as views
from strato.api.envelope import Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import DOMAIN_ADMINS, Kind, api
from strato.errors import InvalidParameter, PermissionDenied
from strato.services.core import limits
from strato.services.core.access import get_domain
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.identity import sshkeys
from strato.services.identity.identity import find_account, get_account

OWNER = (
    Param("account", T.STRING, "The account of the key pair (admins); with domainid", max_length=255),
    Param("domainid", T.UUID, "The domain of the account"),
)


@api(
    "createSSHKeyPair",
    "Create a new key pair; the private key is returned once",
    response="keypair",
    event="REGISTER.SSH.KEYPAIR",
    params=(Param("name", T.STRING, "Name of the keypair", required=True, max_length=255), *OWNER),
)
def create(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    pair, private = sshkeys.create(ctx, args)
    return views.ssh_keypair(ctx.session, pair, private)


@api(
    "registerSSHKeyPair",
    "Register a public key in a keypair under a certain name",
    response="keypair",
    event="REGISTER.SSH.KEYPAIR",
    params=(
        Param("name", T.STRING, "Name of the keypair", required=True, max_length=255),
        Param("publickey", T.STRING, "Public key material of the keypair", required=True, max_length=8192),
        *OWNER,
    ),
)
def register(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.ssh_keypair(ctx.session, sshkeys.register(ctx, args))


@api(
    "listSSHKeyPairs",
    "List registered keypairs",
    kind=Kind.LIST,
    response="sshkeypair",
    owned=True,
    params=(
        Param("name", T.STRING, "A key pair name to look for", max_length=255),
        Param("fingerprint", T.STRING, "A public key fingerprint to look for", max_length=255),
        Param("id", T.UUID, "The ID of the ssh keypair"),
    ),
)
def list_pairs(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = sshkeys.list_pairs(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda k: views.ssh_keypair(ctx.session, k)), total)


@api(
    "deleteSSHKeyPair",
    "Deletes a keypair by name",
    kind=Kind.SUCCESS,
    event="DELETE.SSH.KEYPAIR",
    params=(Param("name", T.STRING, "Name of the keypair", required=True, max_length=255), *OWNER),
)
def delete(ctx: CallContext, args: dict[str, Any]) -> None:
    sshkeys.delete(ctx, args)


def _limit_view(account: Any, rtype: int, maximum: int) -> dict[str, Any]:
    return {
        "account": account.name,
        "accountid": account.id,
        "domainid": account.domain_id,
        "resourcetype": str(rtype),
        "resourcetypename": limits.NAMES[rtype],
        "max": maximum,
    }


def _domain_limit_view(domain: Any, rtype: int, maximum: int) -> dict[str, Any]:
    return {
        "domainid": domain.id,
        "domain": domain.name,
        "resourcetype": str(rtype),
        "resourcetypename": limits.NAMES[rtype],
        "max": maximum,
    }


TYPE_HELP = "Type: 0 VMs, 2 volumes, 3 snapshots, 10 primary storage (GiB), 14 VM snapshots (Strato)"


@api(
    "listResourceLimits",
    "Lists resource limits of an account, or of a domain (domainid without account, admins)",
    kind=Kind.LIST,
    response="resourcelimit",
    params=(
        Param("account", T.STRING, "The account (admins); with domainid", max_length=255),
        Param("domainid", T.UUID, "The domain of the account; alone, the domain's own limits"),
        Param("resourcetype", T.INTEGER, TYPE_HELP),
    ),
)
def list_limits(ctx: CallContext, args: dict[str, Any]) -> Listing:
    types = [args["resourcetype"]] if args.get("resourcetype") is not None else list(limits.NAMES)
    types = [t for t in types if t in limits.NAMES]
    if args.get("domainid") and not args.get("account") and ctx.is_admin:
        domain = get_domain(ctx, args["domainid"])
        items = [_domain_limit_view(domain, t, limits.domain_limit(ctx.session, domain, t)) for t in types]
        return Listing(items, len(items))
    account = find_account(ctx, args["account"], args.get("domainid")) if args.get("account") else ctx.account
    items = [_limit_view(account, t, limits.limit(ctx.session, account, t)) for t in types]
    return Listing(items, len(items))


@api(
    "updateResourceLimit",
    "Updates resource limits for an account, or for a domain (domainid without account)",
    response="resourcelimit",
    access=DOMAIN_ADMINS,
    event="RESOURCE.LIMIT.UPDATE",
    params=(
        Param("resourcetype", T.INTEGER, TYPE_HELP, required=True),
        Param("max", T.LONG, "Maximum, -1 for unlimited", min_value=-1),
        Param("account", T.STRING, "The account", max_length=255),
        Param("accountid", T.UUID, "Strato: the account by id"),
        Param("domainid", T.UUID, "The domain of the account; alone, the domain whose subtree is capped"),
    ),
)
def update_limit(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    if args["resourcetype"] not in limits.NAMES:
        raise InvalidParameter(f"Parameter resourcetype must be one of {sorted(limits.NAMES)}")
    maximum = args.get("max", -1)
    if args.get("domainid") and not args.get("account") and not args.get("accountid"):
        domain = get_domain(ctx, args["domainid"])
        if domain.parent_id is None:
            raise InvalidParameter("Parameter domainid: the ROOT domain's limits cannot be changed (always unlimited)")
        if not ctx.is_root_admin and domain.id == ctx.domain.id:
            raise PermissionDenied(
                f"Account {ctx.account.name} may not change the limits of its own domain {domain.name}"
            )
        limits.set_domain_limit(ctx.session, domain, args["resourcetype"], maximum)
        return _domain_limit_view(domain, args["resourcetype"], maximum)
    if args.get("accountid"):
        account = get_account(ctx, args["accountid"])
    elif args.get("account"):
        account = find_account(ctx, args["account"], args.get("domainid"))
    else:
        account = ctx.account
    limits.set_limit(ctx.session, account, args["resourcetype"], maximum)
    return _limit_view(account, args["resourcetype"], maximum)
