"""fair dispatch: each outbox row names its client and lane

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 18:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Rows still waiting to be published get their task's client and lane; published rows
# keep 0/0, which nothing reads.
BACKFILL = """
UPDATE outbox o SET user_id = t.user_id,
                    lane = CASE WHEN t.batch_id IS NULL THEN 0 ELSE 1 END
FROM tasks t
WHERE o.task_id = t.id AND o.published_at IS NULL AND o.dead_at IS NULL
"""


def upgrade() -> None:
    # A constant default on a NOT NULL column is stored in the catalog: no table rewrite.
    # Both may run again: a lock timeout in the autocommit block re-runs the revision.
    op.add_column('outbox', sa.Column('user_id', sa.BigInteger(), nullable=False,
                                      server_default=sa.text('0')), if_not_exists=True)
    op.add_column('outbox', sa.Column('lane', sa.SmallInteger(), nullable=False,
                                      server_default=sa.text('0')), if_not_exists=True)
    op.execute(BACKFILL)
    with op.get_context().autocommit_block():
        # The relay walks the backlog client by client (a skip scan of this index).
        op.create_index(
            'ix_outbox_backlog', 'outbox', ['user_id', 'lane', 'id'],
            postgresql_include=['available_at'],
            postgresql_where=sa.text('published_at IS NULL AND dead_at IS NULL'),
            postgresql_concurrently=True, if_not_exists=True,
        )
        # The backlog by id alone: the new index serves every reader it had.
        op.drop_index('ix_outbox_unpublished', table_name='outbox',
                      postgresql_concurrently=True, if_exists=True)
        # Each client's messages in the broker (its window), counted per lane.
        op.create_index(
            'ix_tasks_in_broker', 'tasks',
            ['user_id', sa.text('(CASE WHEN batch_id IS NULL THEN 0 ELSE 1 END)')],
            postgresql_where=sa.text("status = 'queued'"),
            postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            'ix_outbox_unpublished', 'outbox', ['id'],
            postgresql_where=sa.text('published_at IS NULL AND dead_at IS NULL'),
            postgresql_concurrently=True, if_not_exists=True,
        )
        op.drop_index('ix_tasks_in_broker', table_name='tasks', postgresql_concurrently=True,
                      if_exists=True)
        op.drop_index('ix_outbox_backlog', table_name='outbox', postgresql_concurrently=True,
                      if_exists=True)
    op.drop_column('outbox', 'lane')
    op.drop_column('outbox', 'user_id')
