"""outbox retry: backoff time, permanent cause, and room for 'undeliverable'

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cause', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(), nullable=True))
        batch_op.alter_column('status', existing_type=sa.String(length=12), type_=sa.String(length=16), existing_nullable=False)
        batch_op.create_index('ix_messages_due', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_due')
        batch_op.alter_column('status', existing_type=sa.String(length=16), type_=sa.String(length=12), existing_nullable=False)
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('cause')
