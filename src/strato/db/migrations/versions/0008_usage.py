"""Usage: usage events written with the changes they bill, usage records made from them per period

Revision ID: 0008_usage
Revises: 0007
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008_usage"
down_revision = "0007"
branch_labels = None
depends_on = None


def _entity() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
    ]


def _owner(table: str) -> list[Any]:
    return [
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("domain_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f(f"fk_{table}_account_id_accounts")),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], name=op.f(f"fk_{table}_domain_id_domains")),
    ]


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("zone_id", sa.String(length=36), nullable=True),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("resource_name", sa.String(length=255), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        *_owner("usage_events"),
        *_entity(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
    )
    for col in ("type", "account_id", "resource_id"):
        op.create_index(op.f(f"ix_usage_events_{col}"), "usage_events", [col], unique=False)
    op.create_table(
        "usage_records",
        sa.Column("usage_type", sa.Integer(), nullable=False),
        sa.Column("zone_id", sa.String(length=36), nullable=True),
        sa.Column("usage_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=True),
        sa.Column("description", sa.String(length=1024), nullable=False),
        sa.Column("raw_usage", sa.Float(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        *_owner("usage_records"),
        *_entity(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    for col in ("account_id", "usage_id"):
        op.create_index(op.f(f"ix_usage_records_{col}"), "usage_records", [col], unique=False)
    op.create_index("ix_usage_records_period", "usage_records", ["period_start", "usage_type"], unique=False)


def downgrade() -> None:
    op.drop_table("usage_records")
    op.drop_table("usage_events")
