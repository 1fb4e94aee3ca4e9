"""natpub: public IP ranges (vlan), public addresses of isolated networks, port forwards, firewall rules

Revision ID: 0012_natpub
Revises: 0011_volsnap
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_natpub"
down_revision = "0011_volsnap"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "public_ip_ranges",
        sa.Column("zone_id", sa.String(length=36), nullable=False),
        sa.Column("physical_network_id", sa.String(length=36), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("netmask", sa.String(length=64), nullable=False),
        sa.Column("start_ip", sa.String(length=64), nullable=False),
        sa.Column("end_ip", sa.String(length=64), nullable=False),
        sa.Column("vlan", sa.String(length=64), nullable=False),
        sa.Column("for_virtual_network", sa.Boolean(), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["physical_network_id"],
            ["physical_networks.id"],
            name=op.f("fk_public_ip_ranges_physical_network_id_physical_networks"),
        ),
        sa.ForeignKeyConstraint(["zone_id"], ["zones.id"], name=op.f("fk_public_ip_ranges_zone_id_zones")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_public_ip_ranges")),
    )
    with op.batch_alter_table("public_ip_ranges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_public_ip_ranges_physical_network_id"), ["physical_network_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_public_ip_ranges_zone_id"), ["zone_id"], unique=False)

    op.create_table(
        "public_ip_addresses",
        sa.Column("range_id", sa.String(length=36), nullable=False),
        sa.Column("zone_id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("domain_id", sa.String(length=36), nullable=False),
        sa.Column("source_nat", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("static_nat_vm_id", sa.String(length=36), nullable=True),
        sa.Column("static_nat_ip", sa.String(length=64), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_public_ip_addresses_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], name=op.f("fk_public_ip_addresses_domain_id_domains")),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_public_ip_addresses_network_id_networks")
        ),
        sa.ForeignKeyConstraint(
            ["range_id"], ["public_ip_ranges.id"], name=op.f("fk_public_ip_addresses_range_id_public_ip_ranges")
        ),
        sa.ForeignKeyConstraint(
            ["static_nat_vm_id"],
            ["virtual_machines.id"],
            name=op.f("fk_public_ip_addresses_static_nat_vm_id_virtual_machines"),
        ),
        sa.ForeignKeyConstraint(["zone_id"], ["zones.id"], name=op.f("fk_public_ip_addresses_zone_id_zones")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_public_ip_addresses")),
        sa.UniqueConstraint("zone_id", "address", name="uq_public_ip_addresses_zone_address"),
    )
    with op.batch_alter_table("public_ip_addresses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_public_ip_addresses_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_public_ip_addresses_domain_id"), ["domain_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_public_ip_addresses_network_id"), ["network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_public_ip_addresses_range_id"), ["range_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_public_ip_addresses_zone_id"), ["zone_id"], unique=False)

    op.create_table(
        "port_forwarding_rules",
        sa.Column("ip_address_id", sa.String(length=36), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("public_start", sa.Integer(), nullable=False),
        sa.Column("public_end", sa.Integer(), nullable=False),
        sa.Column("private_start", sa.Integer(), nullable=False),
        sa.Column("private_end", sa.Integer(), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=False),
        sa.Column("vm_ip", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_port_forwarding_rules_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["ip_address_id"],
            ["public_ip_addresses.id"],
            name=op.f("fk_port_forwarding_rules_ip_address_id_public_ip_addresses"),
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_port_forwarding_rules_network_id_networks")
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["virtual_machines.id"], name=op.f("fk_port_forwarding_rules_vm_id_virtual_machines")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_port_forwarding_rules")),
    )
    with op.batch_alter_table("port_forwarding_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_port_forwarding_rules_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_port_forwarding_rules_ip_address_id"), ["ip_address_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_port_forwarding_rules_network_id"), ["network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_port_forwarding_rules_vm_id"), ["vm_id"], unique=False)

    op.create_table(
        "public_firewall_rules",
        sa.Column("ip_address_id", sa.String(length=36), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("start_port", sa.Integer(), nullable=True),
        sa.Column("end_port", sa.Integer(), nullable=True),
        sa.Column("cidrs", sa.JSON(), nullable=False),
        sa.Column("forward_id", sa.String(length=36), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_public_firewall_rules_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["forward_id"],
            ["port_forwarding_rules.id"],
            name=op.f("fk_public_firewall_rules_forward_id_port_forwarding_rules"),
        ),
        sa.ForeignKeyConstraint(
            ["ip_address_id"],
            ["public_ip_addresses.id"],
            name=op.f("fk_public_firewall_rules_ip_address_id_public_ip_addresses"),
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_public_firewall_rules_network_id_networks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_public_firewall_rules")),
    )
    with op.batch_alter_table("public_firewall_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_public_firewall_rules_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_public_firewall_rules_ip_address_id"), ["ip_address_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_public_firewall_rules_network_id"), ["network_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("public_firewall_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_public_firewall_rules_network_id"))
        batch_op.drop_index(batch_op.f("ix_public_firewall_rules_ip_address_id"))
        batch_op.drop_index(batch_op.f("ix_public_firewall_rules_account_id"))

    op.drop_table("public_firewall_rules")
    with op.batch_alter_table("port_forwarding_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_port_forwarding_rules_vm_id"))
        batch_op.drop_index(batch_op.f("ix_port_forwarding_rules_network_id"))
        batch_op.drop_index(batch_op.f("ix_port_forwarding_rules_ip_address_id"))
        batch_op.drop_index(batch_op.f("ix_port_forwarding_rules_account_id"))

    op.drop_table("port_forwarding_rules")
    with op.batch_alter_table("public_ip_addresses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_public_ip_addresses_zone_id"))
        batch_op.drop_index(batch_op.f("ix_public_ip_addresses_range_id"))
        batch_op.drop_index(batch_op.f("ix_public_ip_addresses_network_id"))
        batch_op.drop_index(batch_op.f("ix_public_ip_addresses_domain_id"))
        batch_op.drop_index(batch_op.f("ix_public_ip_addresses_account_id"))

    op.drop_table("public_ip_addresses")
    with op.batch_alter_table("public_ip_ranges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_public_ip_ranges_zone_id"))
        batch_op.drop_index(batch_op.f("ix_public_ip_ranges_physical_network_id"))

    op.drop_table("public_ip_ranges")
