"""Security groups: groups, their rules, the VMs in each; zones.security_group_enabled

Revision ID: 0010_secgroups
Revises: 0009_domain_limits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_secgroups"
down_revision = "0009_domain_limits"
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
        "security_groups",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=4096), nullable=True),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("domain_id", sa.String(length=36), nullable=False),
        *_entity(),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_security_groups_account_id_accounts")),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], name=op.f("fk_security_groups_domain_id_domains")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_groups")),
        sa.UniqueConstraint("account_id", "name", name="uq_security_groups_account_name"),
    )
    for col in ("account_id", "domain_id", "name"):
        op.create_index(op.f(f"ix_security_groups_{col}"), "security_groups", [col], unique=False)
    op.create_table(
        "security_group_rules",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("start_port", sa.Integer(), nullable=True),
        sa.Column("end_port", sa.Integer(), nullable=True),
        sa.Column("icmp_type", sa.Integer(), nullable=True),
        sa.Column("icmp_code", sa.Integer(), nullable=True),
        sa.Column("cidr", sa.String(length=64), nullable=True),
        sa.Column("peer_group_id", sa.String(length=36), nullable=True),
        *_entity(),
        sa.ForeignKeyConstraint(
            ["group_id"], ["security_groups.id"], name=op.f("fk_security_group_rules_group_id_security_groups")
        ),
        sa.ForeignKeyConstraint(
            ["peer_group_id"],
            ["security_groups.id"],
            name=op.f("fk_security_group_rules_peer_group_id_security_groups"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_group_rules")),
    )
    for col in ("group_id", "peer_group_id"):
        op.create_index(op.f(f"ix_security_group_rules_{col}"), "security_group_rules", [col], unique=False)
    op.create_table(
        "vm_security_groups",
        sa.Column("vm_id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        *_entity(),
        sa.ForeignKeyConstraint(
            ["group_id"], ["security_groups.id"], name=op.f("fk_vm_security_groups_group_id_security_groups")
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["virtual_machines.id"], name=op.f("fk_vm_security_groups_vm_id_virtual_machines")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_security_groups")),
        sa.UniqueConstraint("vm_id", "group_id", name="uq_vm_security_groups"),
    )
    for col in ("group_id", "vm_id"):
        op.create_index(op.f(f"ix_vm_security_groups_{col}"), "vm_security_groups", [col], unique=False)
    with op.batch_alter_table("zones", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("security_group_enabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("zones", schema=None) as batch_op:
        batch_op.drop_column("security_group_enabled")
    op.drop_table("vm_security_groups")
    op.drop_table("security_group_rules")
    op.drop_table("security_groups")
