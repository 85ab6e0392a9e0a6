"""know where each queued message is: broker ids, the task's message, re-dispatch counts, epoch

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Catalog-only changes (under env.py's short lock_timeout): nullable columns without a
    # default, and a NOT NULL column whose default is a constant, rewrite no row. All of it
    # may run again: a lock timeout in the autocommit block re-runs the revision.
    # The id the broker stores a published message under (Dramatiq's redis_message_id).
    op.add_column('outbox', sa.Column('broker_message_id', sa.Text(), nullable=True),
                  if_not_exists=True)
    # The outbox row whose message a queued task waits for; no foreign key, so pruning
    # old rows never waits on tasks.
    op.add_column('tasks', sa.Column('queued_outbox_id', sa.BigInteger(), nullable=True),
                  if_not_exists=True)
    # Dispatches beyond the first that were not the task's fault (lost message, expired
    # lease, broker reset); attempts count runs only.
    op.add_column(
        'tasks',
        sa.Column('redispatches', sa.Integer(), server_default=sa.text('0'), nullable=False),
        if_not_exists=True,
    )
    # One row: the broker epoch the relays last saw (a key they keep in the broker), and
    # the broker server's run id.
    op.create_table(
        'broker_state',
        sa.Column('id', sa.SmallInteger(), server_default=sa.text('1'), nullable=False),
        sa.Column('epoch', sa.Text(), nullable=False),
        sa.Column('run_id', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.CheckConstraint('id = 1', name=op.f('ck_broker_state_one_row')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_broker_state')),
        if_not_exists=True,
    )
    with op.get_context().autocommit_block():
        # The leader walks queued tasks oldest first to check their messages.
        op.create_index(
            'ix_tasks_queued', 'tasks', ['queued_at', 'id'], unique=False,
            postgresql_where=sa.text("status = 'queued'"),
            postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_tasks_queued', table_name='tasks', postgresql_concurrently=True,
                      if_exists=True)
    op.drop_table('broker_state')
    op.drop_column('tasks', 'redispatches')
    op.drop_column('tasks', 'queued_outbox_id')
    op.drop_column('outbox', 'broker_message_id')
