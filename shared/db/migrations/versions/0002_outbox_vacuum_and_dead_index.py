"""outbox: vacuum after a fixed number of dead rows; index dead rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Marking a row published is a non-HOT update (published_at is in the partial
# index's predicate), so each published row leaves a dead entry in
# ix_outbox_unpublished that every claim walks until VACUUM removes it. The
# default trigger (20 % of the table dead) lets hundreds of thousands of such
# entries pile up in a table that keeps days of history; vacuum instead after a
# fixed number of dead rows and without cost throttling. Numbers: README.
STORAGE = {
    'autovacuum_vacuum_scale_factor': '0',
    'autovacuum_vacuum_threshold': '5000',
    'autovacuum_vacuum_cost_delay': '0',
}


def upgrade() -> None:
    options = ', '.join(f'{name} = {value}' for name, value in STORAGE.items())
    op.execute(f'ALTER TABLE outbox SET ({options})')
    with op.get_context().autocommit_block():
        op.create_index('ix_outbox_dead', 'outbox', ['id'], unique=False,
                        postgresql_where=sa.text('dead_at IS NOT NULL'),
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_outbox_dead', table_name='outbox', postgresql_concurrently=True,
                      if_exists=True)
    op.execute(f"ALTER TABLE outbox RESET ({', '.join(STORAGE)})")
