"""Domain resource limits: a limit row names a domain (and no account) for the domain's whole subtree

Revision ID: 0009_domain_limits
Revises: 0008_usage
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_domain_limits"
down_revision = "0008_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("domain_id", sa.String(length=36), nullable=True))
        batch_op.alter_column("account_id", existing_type=sa.String(length=36), nullable=True)
        batch_op.create_index(batch_op.f("ix_resource_limits_domain_id"), ["domain_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_resource_limits_domain_id_domains"), "domains", ["domain_id"], ["id"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM resource_limits WHERE account_id IS NULL")
    with op.batch_alter_table("resource_limits", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_resource_limits_domain_id_domains"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_resource_limits_domain_id"))
        batch_op.alter_column("account_id", existing_type=sa.String(length=36), nullable=False)
        batch_op.drop_column("domain_id")
