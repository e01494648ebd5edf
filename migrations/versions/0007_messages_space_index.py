"""messages: an index on (agency_id, address, status) for the outbox's per-space reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 20:50:00
"""
from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_space', ['agency_id', 'address', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_space')
