"""batches listed by user, newest first

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-07 21:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # GET /api/v1/batches: a user's batches newest first, in keyset pages.
        op.create_index(
            'ix_batches_user_created', 'batches',
            ['user_id', sa.text('created_at DESC'), sa.text('id DESC')],
            postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_batches_user_created', table_name='batches',
                      postgresql_concurrently=True, if_exists=True)
