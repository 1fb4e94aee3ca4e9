"""netoffer: network offerings made by admins, egress firewall rules

Revision ID: 0014_netoffer
Revises: 0013_scale
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_netoffer"
down_revision = "0013_scale"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "network_offerings",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("display_text", sa.String(length=4096), nullable=False),
        sa.Column("guest_ip_type", sa.String(length=16), nullable=False),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("specify_vlan", sa.Boolean(), nullable=False),
        sa.Column("specify_ip_ranges", sa.Boolean(), nullable=False),
        sa.Column("egress_default_allow", sa.Boolean(), nullable=False),
        sa.Column("conserve_mode", sa.Boolean(), nullable=False),
        sa.Column("availability", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_offerings")),
    )
    with op.batch_alter_table("network_offerings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_network_offerings_name"), ["name"], unique=False)

    op.create_table(
        "egress_firewall_rules",
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("start_port", sa.Integer(), nullable=True),
        sa.Column("end_port", sa.Integer(), nullable=True),
        sa.Column("icmp_type", sa.Integer(), nullable=True),
        sa.Column("icmp_code", sa.Integer(), nullable=True),
        sa.Column("cidrs", sa.JSON(), nullable=False),
        sa.Column("dest_cidrs", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_egress_firewall_rules_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_egress_firewall_rules_network_id_networks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_egress_firewall_rules")),
    )
    with op.batch_alter_table("egress_firewall_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_egress_firewall_rules_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_egress_firewall_rules_network_id"), ["network_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("egress_firewall_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_egress_firewall_rules_network_id"))
        batch_op.drop_index(batch_op.f("ix_egress_firewall_rules_account_id"))

    op.drop_table("egress_firewall_rules")
    with op.batch_alter_table("network_offerings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_network_offerings_name"))

    op.drop_table("network_offerings")
