"""VM snapshots: the tree (vm_snapshots), each node's frozen layer per disk, the VM's current snapshot

Revision ID: 0007
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
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
        "vm_snapshots",
        sa.Column("vm_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("domain_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("snapshot_type", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.String(length=36), nullable=True),
        sa.Column("hidden", sa.Boolean(), nullable=False),
        sa.Column("memory_layer_id", sa.String(length=36), nullable=True),
        *_entity(),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_vm_snapshots_account_id_accounts")),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], name=op.f("fk_vm_snapshots_domain_id_domains")),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["vm_snapshots.id"], name=op.f("fk_vm_snapshots_parent_id_vm_snapshots")
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["virtual_machines.id"], name=op.f("fk_vm_snapshots_vm_id_virtual_machines")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_snapshots")),
    )
    for col in ("account_id", "parent_id", "vm_id"):
        op.create_index(op.f(f"ix_vm_snapshots_{col}"), "vm_snapshots", [col], unique=False)
    op.create_table(
        "vm_snapshot_disks",
        sa.Column("snapshot_id", sa.String(length=36), nullable=False),
        sa.Column("volume_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("layer_id", sa.String(length=36), nullable=False),
        *_entity(),
        sa.ForeignKeyConstraint(["layer_id"], ["layers.id"], name=op.f("fk_vm_snapshot_disks_layer_id_layers")),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["vm_snapshots.id"], name=op.f("fk_vm_snapshot_disks_snapshot_id_vm_snapshots")
        ),
        sa.ForeignKeyConstraint(["volume_id"], ["volumes.id"], name=op.f("fk_vm_snapshot_disks_volume_id_volumes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_snapshot_disks")),
    )
    for col in ("layer_id", "snapshot_id", "volume_id"):
        op.create_index(op.f(f"ix_vm_snapshot_disks_{col}"), "vm_snapshot_disks", [col], unique=False)
    with op.batch_alter_table("virtual_machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("current_snapshot_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("virtual_machines", schema=None) as batch_op:
        batch_op.drop_column("current_snapshot_id")
    op.drop_table("vm_snapshot_disks")
    op.drop_table("vm_snapshots")
