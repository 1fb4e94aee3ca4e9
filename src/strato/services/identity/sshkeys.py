"""SSH key pairs: created (the private key is shown once) or registered from a public key."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from strato.db.base import utcnow
from strato.db.models import Account, SSHKeyPair
from strato.errors import InvalidParameter, NotFound
from strato.services.core.access import owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.identity.identity import find_account


def fingerprint(public_key: str) -> str:
    """MD5 of the key blob, colon-separated, as `ssh-keygen -l -E md5` and CloudStack show it."""
    parts = public_key.strip().split()
    if len(parts) < 2:
        raise InvalidParameter("Parameter publickey is not an OpenSSH public key ('ssh-rsa AAAA... comment')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
    except ValueError:
        raise InvalidParameter("Parameter publickey is not a valid OpenSSH public key") from None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def _owner(ctx: CallContext, args: dict[str, Any]) -> Account:
    if args.get("account"):
        return find_account(ctx, args["account"], args.get("domainid"))
    return ctx.account


def _check_free(ctx: CallContext, account: Account, name: str) -> None:
    if (
        ctx.session.scalar(
            select(SSHKeyPair).where(
                SSHKeyPair.account_id == account.id, SSHKeyPair.name == name, SSHKeyPair.removed.is_(None)
            )
        )
        is not None
    ):
        raise InvalidParameter(f"A key pair with name {name} already exists for account {account.name}")


def create(ctx: CallContext, args: dict[str, Any]) -> tuple[SSHKeyPair, str]:
    """createSSHKeyPair: a new RSA key pair; the private key is shown once and never stored."""
    account = _owner(ctx, args)
    _check_free(ctx, account, args["name"])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        + f" {args['name']}"
    )
    pair = SSHKeyPair(
        name=args["name"],
        account_id=account.id,
        domain_id=account.domain_id,
        public_key=public,
        fingerprint=fingerprint(public),
    )
    ctx.session.add(pair)
    ctx.session.flush()
    return pair, private


def register(ctx: CallContext, args: dict[str, Any]) -> SSHKeyPair:
    """registerSSHKeyPair: an existing public key, for new VMs' authorized_keys."""
    account = _owner(ctx, args)
    _check_free(ctx, account, args["name"])
    public = args["publickey"].strip()
    pair = SSHKeyPair(
        name=args["name"],
        account_id=account.id,
        domain_id=account.domain_id,
        public_key=public,
        fingerprint=fingerprint(public),
    )
    ctx.session.add(pair)
    ctx.session.flush()
    return pair


def find(ctx: CallContext, name: str, account: Account) -> SSHKeyPair:
    """An account's key pair by name, as deploys and resets name it."""
    pair = ctx.session.scalar(
        select(SSHKeyPair).where(
            SSHKeyPair.account_id == account.id, SSHKeyPair.name == name, SSHKeyPair.removed.is_(None)
        )
    )
    if pair is None:
        raise NotFound(f"Unable to find a key pair named {name} for account {account.name}")
    return pair


def delete(ctx: CallContext, args: dict[str, Any]) -> None:
    """deleteSSHKeyPair: the pair is forgotten; VMs keep the keys they have."""
    find(ctx, args["name"], _owner(ctx, args)).removed = utcnow()


def list_pairs(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[SSHKeyPair], int]:
    """listSSHKeyPairs: the key pairs the caller may see."""
    q = select(SSHKeyPair).where(SSHKeyPair.removed.is_(None), owner_scope(ctx, args).condition(SSHKeyPair.account_id))
    for param, col in (
        ("name", SSHKeyPair.name),
        ("fingerprint", SSHKeyPair.fingerprint),
        ("id", SSHKeyPair.id),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    return run_page(ctx.session, q, page, (SSHKeyPair.name,), (SSHKeyPair.created,))
