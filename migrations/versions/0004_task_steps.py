"""task steps: a transition counter and pending questions per task; plan attempts per project

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 19:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('asks', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan_attempt', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('plan_problems', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_column('plan_problems')
        batch_op.drop_column('plan_attempt')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('asks')
        batch_op.drop_column('seq')
