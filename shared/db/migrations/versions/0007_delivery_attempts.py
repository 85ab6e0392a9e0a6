"""delivery attempts: every try of a callback, and each client's deliveries by id

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



def upgrade() -> None:
    # One row per try, written with the try's outcome; pruned with its delivery.
    op.create_table(
        'delivery_attempts',
        sa.Column('id', sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column('delivery_row_id', sa.BigInteger(), nullable=False),
        sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('duration_ms', sa.Integer(), nullable=False),
        sa.Column('status', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('outcome', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['delivery_row_id'], ['deliveries.id'],
                                name=op.f('fk_delivery_attempts_delivery_row_id_deliveries'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempts')),
        # The revision runs again whole if its autocommit block below times out on a lock.
        if_not_exists=True,
    )
    # A new, empty table: a plain index takes no lock anyone waits on.
    op.create_index('ix_delivery_attempts_delivery', 'delivery_attempts',
                    ['delivery_row_id', 'id'], if_not_exists=True)
    with op.get_context().autocommit_block():
        # A client's own deliveries, newest first, in keyset pages.
        op.create_index(
            'ix_deliveries_user_id', 'deliveries', ['user_id', 'id'],
            postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_deliveries_user_id', table_name='deliveries',
                      postgresql_concurrently=True, if_exists=True)
    op.drop_index('ix_delivery_attempts_delivery', table_name='delivery_attempts')
    op.drop_table('delivery_attempts')
