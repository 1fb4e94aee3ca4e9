"""login, logout, domains, accounts, users and API keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from strato.api import authn, views
from strato.api.dispatch import Reply, Request
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, DOMAIN_ADMINS, Kind, api
from strato.api.viewkit import register_result
from strato.db.models import Account, User
from strato.errors import CloudError, ErrorCode
from strato.services.compute import account_disable
from strato.services.core import jobs, settings
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.identity import deletion, identity, lifecycle

USER_FIELDS = (
    Param("username", T.STRING, "Unique username", required=True, max_length=255),
    Param("password", T.STRING, "Clear text password", required=True, max_length=255),
    Param("firstname", T.STRING, "First name", max_length=255),
    Param("lastname", T.STRING, "Last name", max_length=255),
    Param("email", T.STRING, "Email address", max_length=255),
    Param("timezone", T.STRING, "Time zone of the user", max_length=64),
)


@api(
    "login",
    "Logs a user into the CloudStack API and returns a session key",
    kind=Kind.RAW,
    anonymous=True,
    params=(
        Param("username", T.STRING, "Username", required=True, max_length=255),
        Param("password", T.STRING, "Password (clear text)", required=True, max_length=255),
        Param(
            "domain",
            T.STRING,
            "Path of the domain the user belongs to, e.g. / or /ROOT/sales",
            max_length=1024,
        ),
        Param("domainid", T.UUID, "The id of the domain the user belongs to"),
    ),
)
def login(session: Session, args: dict[str, Any], req: Request) -> Reply:
    if req.method != "POST":
        raise CloudError("login must be sent as a POST request", ErrorCode.METHOD_NOT_ALLOWED)
    ctx, key, cookie = authn.login(
        session, args["username"], args["password"], args.get("domain"), args.get("domainid"), req.remote
    )
    body = {
        "loginresponse": {
            "username": ctx.user.username,
            "userid": ctx.user.id,
            "domainid": ctx.domain.id,
            "timeout": settings.get(session, "session.timeout"),
            "account": ctx.account.name,
            "firstname": ctx.user.firstname,
            "lastname": ctx.user.lastname,
            "type": ctx.account.type,
            "sessionkey": key,
            "registered": "false",
            "timezone": ctx.user.timezone,
        }
    }
    return Reply(
        200,
        {"loginresponse": {k: v for k, v in body["loginresponse"].items() if v is not None}},
        cookies={"sessionkey": key, "JSESSIONID": cookie},
    )


@api(
    "logout",
    "Logs out the user",
    kind=Kind.RAW,
    anonymous=True,
    params=(Param("sessionkey", T.STRING, "The session to end", max_length=255),),
)
def logout(session: Session, args: dict[str, Any], req: Request) -> Reply:
    authn.logout(session, args.get("sessionkey") or req.session_header, req.session_cookie)
    return Reply(200, {"logoutresponse": {"description": "success"}}, cookies={"sessionkey": None, "JSESSIONID": None})


# --- domains ---------------------------------------------------------------------------------------


@api(
    "createDomain",
    "Creates a domain",
    response="domain",
    access=DOMAIN_ADMINS,
    event="DOMAIN.CREATE",
    params=(
        Param("name", T.STRING, "Creates a domain with this name", required=True, max_length=255),
        Param("parentdomainid", T.UUID, "Assigns the new domain a parent domain by id"),
        Param("networkdomain", T.STRING, "Network domain for networks in the domain", max_length=255),
    ),
)
def create_domain(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    d = identity.create_domain(ctx, args["name"], args.get("parentdomainid"), args.get("networkdomain"))
    return views.domain(ctx.session, d)


@api(
    "listDomains",
    "Lists domains and provides detailed information for listed domains",
    kind=Kind.LIST,
    response="domain",
    params=(
        Param("id", T.UUID, "List domain by domain id"),
        Param("name", T.STRING, "List domain by domain name", max_length=255),
        Param("level", T.INTEGER, "List domains by domain level"),
        Param("listall", T.BOOLEAN, "List all domains the caller may see"),
    ),
)
def list_domains(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = identity.list_domains(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda d: views.domain(ctx.session, d)), total)


@api(
    "deleteDomain",
    "Deletes a specified domain",
    kind=Kind.ASYNC,
    access=DOMAIN_ADMINS,
    event="DOMAIN.DELETE",
    params=(
        Param("id", T.UUID, "ID of the domain to delete", required=True),
        Param("cleanup", T.BOOLEAN, "True to delete the domain's accounts too"),
    ),
)
def delete_domain(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(deletion.delete_domain(ctx, args["id"], bool(args.get("cleanup"))), args["id"])


# --- accounts --------------------------------------------------------------------------------------


@api(
    "createAccount",
    "Creates an account",
    response="account",
    access=DOMAIN_ADMINS,
    event="ACCOUNT.CREATE",
    params=(
        *USER_FIELDS,
        Param("accounttype", T.SHORT, "Type of the account: 0 user, 1 root admin, 2 domain admin"),
        Param(
            "roletype",
            T.STRING,
            "Role of the account (User, DomainAdmin, Admin)",
            choices=("User", "DomainAdmin", "Admin"),
        ),
        Param("account", T.STRING, "Name of the account; defaults to the username", max_length=255),
        Param("domainid", T.UUID, "Creates the account in this domain"),
        Param("networkdomain", T.STRING, "Network domain for the account's networks", max_length=255),
    ),
)
def create_account(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.account(ctx.session, identity.create_account(ctx, args))


@api(
    "listAccounts",
    "Lists accounts and provides detailed account information",
    kind=Kind.LIST,
    response="account",
    owned=True,
    params=(
        Param("id", T.UUID, "List account by account ID"),
        Param("name", T.STRING, "List account by account name", max_length=255),
        Param("accounttype", T.SHORT, "List accounts by account type"),
        Param("state", T.STRING, "List accounts by state", max_length=32),
    ),
)
def list_accounts(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = identity.list_accounts(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda a: views.account(ctx.session, a)), total)


@api(
    "updateAccount",
    "Updates account information for the authenticated user",
    response="account",
    access=DOMAIN_ADMINS,
    event="ACCOUNT.UPDATE",
    params=(
        Param("id", T.UUID, "Account id"),
        Param("account", T.STRING, "The current account name", max_length=255),
        Param("domainid", T.UUID, "The domain of the account"),
        Param("newname", T.STRING, "New name for the account", max_length=255),
        Param("networkdomain", T.STRING, "Network domain for the account's networks", max_length=255),
    ),
)
def update_account(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.account(ctx.session, identity.update_account(ctx, args))


@api(
    "deleteAccount",
    "Deletes an account and all users in it",
    kind=Kind.ASYNC,
    access=DOMAIN_ADMINS,
    event="ACCOUNT.DELETE",
    params=(Param("id", T.UUID, "Account id", required=True),),
)
def delete_account(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(deletion.delete_account(ctx, args["id"]), args["id"])


# --- users -----------------------------------------------------------------------------------------


@api(
    "createUser",
    "Creates a user for an account that already exists",
    response="user",
    access=DOMAIN_ADMINS,
    event="USER.CREATE",
    params=(
        *USER_FIELDS,
        Param("account", T.STRING, "The account to create the user in", required=True, max_length=255),
        Param("domainid", T.UUID, "The domain of the account"),
    ),
)
def create_user(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.user(ctx.session, identity.create_user(ctx, args))


@api(
    "listUsers",
    "Lists user accounts",
    kind=Kind.LIST,
    response="user",
    owned=True,
    params=(
        Param("id", T.UUID, "List user by ID"),
        Param("username", T.STRING, "List user by the username", max_length=255),
        Param("state", T.STRING, "List users by state", max_length=32),
    ),
)
def list_users(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = identity.list_users(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda u: views.user(ctx.session, u)), total)


@api(
    "registerUserKeys",
    "Generates a new API key and secret key for a user",
    kind=Kind.RAW,
    event="REGISTER.USER.KEY",
    params=(Param("id", T.UUID, "User id", required=True),),
)
def register_user_keys(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    user = identity.register_user_keys(ctx, args["id"])
    return {"userkeys": {"apikey": user.api_key, "secretkey": user.secret_key}}


@api(
    "getUserKeys",
    "Returns the API key and secret key of a user",
    kind=Kind.RAW,
    params=(Param("id", T.UUID, "User id", required=True),),
)
def get_user_keys(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    user = identity.get_user(ctx, args["id"])
    return {"userkeys": {"apikey": user.api_key, "secretkey": user.secret_key}}


# --- the user and account lifecycle ----------------------------------------------------------------

register_result("user", lambda s, i, _admin: views.user(s, u) if (u := s.get(User, i)) is not None else None)
register_result("account", lambda s, i, _admin: views.account(s, a) if (a := s.get(Account, i)) is not None else None)

USER_ID = Param("id", T.UUID, "User id", required=True)
ACCOUNT_BY = (
    Param("id", T.UUID, "Account id"),
    Param("account", T.STRING, "Account name (with domainid)", max_length=255),
    Param("domainid", T.UUID, "The domain of the account"),
)


@api(
    "updateUser",
    "Updates a user account",
    response="user",
    event="USER.UPDATE",
    params=(
        USER_ID,
        Param("username", T.STRING, "Unique username", max_length=255),
        Param("password", T.STRING, "Clear text password", max_length=255),
        Param("currentpassword", T.STRING, "The current password, when users change their own", max_length=255),
        Param("firstname", T.STRING, "First name", max_length=255),
        Param("lastname", T.STRING, "Last name", max_length=255),
        Param("email", T.STRING, "Email address", max_length=255),
        Param("timezone", T.STRING, "Time zone of the user", max_length=64),
    ),
)
def update_user(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.user(ctx.session, lifecycle.update_user(ctx, args))


@api(
    "disableUser",
    "Disables a user account",
    kind=Kind.ASYNC,
    access=DOMAIN_ADMINS,
    event="USER.DISABLE",
    params=(USER_ID,),
)
def disable_user(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(account_disable.disable_user(ctx, args["id"]))


@api("enableUser", "Enables a user account", response="user", access=DOMAIN_ADMINS, event="USER.ENABLE",
     params=(USER_ID,))  # fmt: skip
def enable_user(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.user(ctx.session, lifecycle.enable_user(ctx, args["id"]))


@api("lockUser", "Locks a user account", response="user", access=DOMAIN_ADMINS, event="USER.LOCK",
     params=(USER_ID,))  # fmt: skip
def lock_user(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.user(ctx.session, lifecycle.lock_user(ctx, args["id"]))


@api("deleteUser", "Deletes a user for an account", kind=Kind.SUCCESS, access=DOMAIN_ADMINS,
     event="USER.DELETE", params=(USER_ID,))  # fmt: skip
def delete_user(ctx: CallContext, args: dict[str, Any]) -> None:
    lifecycle.delete_user(ctx, args["id"])


@api(
    "disableAccount",
    "Disables an account",
    kind=Kind.ASYNC,
    access=DOMAIN_ADMINS,
    event="ACCOUNT.DISABLE",
    params=(
        *ACCOUNT_BY,
        Param("lock", T.BOOLEAN, "If true, only lock the account; else disable it and stop its VMs", required=True),
    ),
)
def disable_account(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    if args["lock"]:
        acct = lifecycle.lock_account(ctx, args)
        return AsyncStarted(jobs.completed(ctx, "disableAccount", {"type": "account", "id": acct.id}, "Account"))
    job_id, _ = account_disable.disable_account(ctx, args)
    return AsyncStarted(job_id)


@api("enableAccount", "Enables an account", response="account", access=DOMAIN_ADMINS, event="ACCOUNT.ENABLE",
     params=ACCOUNT_BY)  # fmt: skip
def enable_account(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.account(ctx.session, lifecycle.enable_account(ctx, args))


@api(
    "lockAccount",
    "Locks an account",
    response="account",
    access=DOMAIN_ADMINS,
    event="ACCOUNT.LOCK",
    params=(
        Param("account", T.STRING, "Locks the specified account", required=True, max_length=255),
        Param("domainid", T.UUID, "Locks the account in this domain", required=True),
    ),
)
def lock_account(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.account(ctx.session, lifecycle.lock_account(ctx, args))


ROOT_ONLY = ADMIN  # re-exported for readability in other modules
