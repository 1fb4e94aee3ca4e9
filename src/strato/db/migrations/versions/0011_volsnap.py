"""Volume snapshots (snapshots on image stores) and their recurring policies

Revision ID: 0011_volsnap
Revises: 0010_secgroups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_volsnap"
down_revision = "0010_secgroups"
branch_labels = None
depends_on = None


def _entity() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("volume_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("domain_id", sa.String(length=36), nullable=False),
        sa.Column("zone_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("snapshot_type", sa.String(length=16), nullable=False),
        sa.Column("interval_type", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("store_id", sa.String(length=36), nullable=True),
        sa.Column("path", sa.String(length=1024), nullable=True),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("physical_size", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.String(length=36), nullable=True),
        *_entity(),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_snapshots_account_id_accounts")),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], name=op.f("fk_snapshots_domain_id_domains")),
        sa.ForeignKeyConstraint(["store_id"], ["image_stores.id"], name=op.f("fk_snapshots_store_id_image_stores")),
        sa.ForeignKeyConstraint(["volume_id"], ["volumes.id"], name=op.f("fk_snapshots_volume_id_volumes")),
        sa.ForeignKeyConstraint(["zone_id"], ["zones.id"], name=op.f("fk_snapshots_zone_id_zones")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
    )
    for col in ("account_id", "name", "policy_id", "volume_id"):
        op.create_index(op.f(f"ix_snapshots_{col}"), "snapshots", [col], unique=False)
    op.create_table(
        "snapshot_policies",
        sa.Column("volume_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("interval_type", sa.String(length=16), nullable=False),
        sa.Column("schedule", sa.String(length=32), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("max_snaps", sa.Integer(), nullable=False),
        sa.Column("next_run", sa.DateTime(timezone=True), nullable=False),
        *_entity(),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_snapshot_policies_account_id_accounts")),
        sa.ForeignKeyConstraint(["volume_id"], ["volumes.id"], name=op.f("fk_snapshot_policies_volume_id_volumes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot_policies")),
    )
    for col in ("account_id", "volume_id"):
        op.create_index(op.f(f"ix_snapshot_policies_{col}"), "snapshot_policies", [col], unique=False)


def downgrade() -> None:
    op.drop_table("snapshot_policies")
    op.drop_table("snapshots")
