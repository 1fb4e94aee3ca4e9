"""An index on virtual_machines.last_host_id: VM sync asks, for each host of every monitor round, for the
VMs whose host or last host it is; without it each ask scanned every VM (hosts x VMs per round)

Revision ID: 0013_scale
Revises: 0012_natpub
"""

from __future__ import annotations

from alembic import op

revision = "0013_scale"
down_revision = "0012_natpub"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("virtual_machines") as batch_op:
        batch_op.create_index(batch_op.f("ix_virtual_machines_last_host_id"), ["last_host_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("virtual_machines") as batch_op:
        batch_op.drop_index(batch_op.f("ix_virtual_machines_last_host_id"))
