"""netdns: each network's DNS domain (networkdomain), answered by its virtual router

Revision ID: 0015_netdns
Revises: 0014_netoffer
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_netdns"
down_revision = "0014_netoffer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.add_column(sa.Column("network_domain", sa.String(length=255), nullable=True))
    # Networks made before: CloudStack's generated domain of their account (as createNetwork now gives).
    op.execute(
        "UPDATE networks SET network_domain = 'cs' || substr(replace(account_id, '-', ''), 1, 8) || 'cloud.internal'"
    )


def downgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.drop_column("network_domain")
