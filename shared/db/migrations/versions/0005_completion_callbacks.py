"""completion callbacks: callback URLs, per-user signing secrets, the deliveries outbox

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The delivery is written by the transaction that ends the task, whichever code path
# that is, so a callback can never be lost between the state and its announcement.
# A batch's delivery is written by the transaction that ends its last task: the batch
# row is locked first, so of two tasks ending at once the second to commit sees the
# first one's end (READ COMMITTED: each statement here takes a fresh snapshot).
CALLBACKS_FUNCTION = """
CREATE FUNCTION task_finished_callbacks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    batch_url text;
    new_id uuid;
BEGIN
    IF NEW.callback_url IS NOT NULL THEN
        new_id := gen_random_uuid();
        INSERT INTO deliveries (delivery_id, user_id, task_id, url, payload)
        VALUES (new_id, NEW.user_id, NEW.id, NEW.callback_url, jsonb_build_object(
            'id', new_id, 'event', 'task.finished',
            'task', jsonb_build_object(
                'id', NEW.id, 'target_domain', NEW.target_domain, 'status', NEW.status,
                'error', NEW.error, 'finished_at', NEW.finished_at)));
        PERFORM pg_notify('scan_callbacks', '');
    END IF;
    IF NEW.batch_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT callback_url INTO batch_url FROM batches WHERE id = NEW.batch_id;
    IF batch_url IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM batches WHERE id = NEW.batch_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM tasks WHERE batch_id = NEW.batch_id
               AND status NOT IN ('succeeded', 'failed', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    new_id := gen_random_uuid();
    INSERT INTO deliveries (delivery_id, user_id, batch_id, url, payload)
    SELECT new_id, NEW.user_id, NEW.batch_id, batch_url, jsonb_build_object(
        'id', new_id, 'event', 'batch.finished',
        'batch', jsonb_build_object(
            'id', NEW.batch_id, 'task_count', count(*),
            'counts', (SELECT jsonb_object_agg(status, n) FROM (
                SELECT status, count(*) AS n FROM tasks WHERE batch_id = NEW.batch_id
                GROUP BY status) AS by_status),
            'finished_at', max(finished_at)))
    FROM tasks WHERE batch_id = NEW.batch_id
    ON CONFLICT (batch_id) WHERE batch_id IS NOT NULL DO NOTHING;
    PERFORM pg_notify('scan_callbacks', '');
    RETURN NULL;
END;
$$
"""
CALLBACKS_TRIGGER = """
CREATE TRIGGER task_finished_callbacks AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
      AND OLD.status IS DISTINCT FROM NEW.status
      AND (NEW.callback_url IS NOT NULL OR NEW.batch_id IS NOT NULL))
EXECUTE FUNCTION task_finished_callbacks()
"""


def upgrade() -> None:
    op.add_column('tasks', sa.Column('callback_url', sa.Text(), nullable=True))
    op.add_column('batches', sa.Column('callback_url', sa.Text(), nullable=True))
    # Signing secrets: the current one and, during a rotation, the previous one; every
    # delivery is signed with each, so a receiver may switch at its own pace.
    op.add_column('users', sa.Column('callback_secret', sa.Text(), nullable=True))
    op.add_column('users', sa.Column('callback_secret_previous', sa.Text(), nullable=True))
    op.create_table(
        'deliveries',
        sa.Column('id', sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column('delivery_id', sa.UUID(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('task_id', sa.UUID(), nullable=True),
        sa.Column('batch_id', sa.UUID(), nullable=True),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('available_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('dead_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                                name=op.f('fk_deliveries_user_id_users'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'],
                                name=op.f('fk_deliveries_task_id_tasks'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'],
                                name=op.f('fk_deliveries_batch_id_batches'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
        sa.UniqueConstraint('delivery_id', name=op.f('uq_deliveries_delivery_id')),
    )
    # What the deliverer claims, oldest first; stays small however long the history.
    op.create_index(
        'ix_deliveries_pending', 'deliveries', ['available_at', 'id'], unique=False,
        postgresql_where=sa.text('delivered_at IS NULL AND dead_at IS NULL'),
    )
    op.create_index(
        'ix_deliveries_dead', 'deliveries', ['id'], unique=False,
        postgresql_where=sa.text('dead_at IS NOT NULL'),
    )
    op.create_index('ix_deliveries_task_id', 'deliveries', ['task_id'], unique=False)
    # One batch callback, when its tasks have first all ended.
    op.create_index(
        'uq_deliveries_batch', 'deliveries', ['batch_id'], unique=True,
        postgresql_where=sa.text('batch_id IS NOT NULL'),
    )
    op.execute(CALLBACKS_FUNCTION)
    op.execute(CALLBACKS_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER task_finished_callbacks ON tasks")
    op.execute("DROP FUNCTION task_finished_callbacks()")
    op.drop_index('uq_deliveries_batch', table_name='deliveries')
    op.drop_index('ix_deliveries_task_id', table_name='deliveries')
    op.drop_index('ix_deliveries_dead', table_name='deliveries')
    op.drop_index('ix_deliveries_pending', table_name='deliveries')
    op.drop_table('deliveries')
    op.drop_column('users', 'callback_secret_previous')
    op.drop_column('users', 'callback_secret')
    op.drop_column('batches', 'callback_url')
    op.drop_column('tasks', 'callback_url')
