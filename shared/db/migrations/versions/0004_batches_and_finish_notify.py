"""batches of tasks; a NOTIFY when a task reaches a terminal state

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every write that ends a task (worker finish, cancel, give-up, dead message, recovery)
# changes `status`; a trigger catches them all, in the transaction of the write, so a
# waiter is woken at commit and never for an uncommitted state. Payload: "task,batch".
FINISH_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION task_finished_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scan_task_finished',
                      NEW.id::text || ',' || coalesce(NEW.batch_id::text, ''));
    RETURN NULL;
END;
$$
"""
FINISH_NOTIFY_TRIGGER = """
CREATE TRIGGER task_finished_notify AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
      AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION task_finished_notify()
"""

# Every statement before the autocommit block may run again (a lock timeout inside the block
# re-runs the revision): hence IF NOT EXISTS, OR REPLACE, DROP IF EXISTS and this guarded
# constraint.
ADD_BATCH_FK = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'fk_tasks_batch_id_batches') THEN
        ALTER TABLE tasks ADD CONSTRAINT fk_tasks_batch_id_batches FOREIGN KEY (batch_id)
        REFERENCES batches (id) ON DELETE CASCADE NOT VALID;
    END IF;
END $$
"""
VALIDATE_BATCH_FK = "ALTER TABLE tasks VALIDATE CONSTRAINT fk_tasks_batch_id_batches"


def upgrade() -> None:
    op.create_table(
        'batches',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('task_count', sa.Integer(), nullable=False),
        sa.Column('idempotency_key', sa.Text(), nullable=True),
        sa.Column('request_hash', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_batches_user_id_users'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_batches')),
        if_not_exists=True,
    )
    op.create_index(
        'uq_batches_user_idempotency_key', 'batches', ['user_id', 'idempotency_key'],
        unique=True, postgresql_where=sa.text('idempotency_key IS NOT NULL'), if_not_exists=True,
    )
    # Nullable columns without a default: adding them rewrites nothing.
    op.add_column('tasks', sa.Column('batch_id', sa.UUID(), nullable=True), if_not_exists=True)
    op.add_column('tasks', sa.Column('batch_position', sa.Integer(), nullable=True),
                  if_not_exists=True)
    # NOT VALID: checked for new rows at once, without scanning the existing ones here.
    op.execute(ADD_BATCH_FK)
    op.execute(FINISH_NOTIFY_FUNCTION)
    # No CREATE OR REPLACE TRIGGER before PostgreSQL 14.
    op.execute("DROP TRIGGER IF EXISTS task_finished_notify ON tasks")
    op.execute(FINISH_NOTIFY_TRIGGER)
    with op.get_context().autocommit_block():
        # The scan of existing rows, in a transaction of its own: VALIDATE holds a lock that
        # lets every read and write of `tasks` go on meanwhile.
        op.execute(VALIDATE_BATCH_FK)
        # A batch's tasks in submission order (keyset pages) and its counts by status.
        op.create_index(
            'ix_tasks_batch', 'tasks', ['batch_id', 'batch_position'], unique=False,
            postgresql_where=sa.text('batch_id IS NOT NULL'),
            postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER task_finished_notify ON tasks")
    op.execute("DROP FUNCTION task_finished_notify()")
    with op.get_context().autocommit_block():
        op.drop_index('ix_tasks_batch', table_name='tasks', postgresql_concurrently=True,
                      if_exists=True)
    op.drop_constraint(op.f('fk_tasks_batch_id_batches'), 'tasks', type_='foreignkey')
    op.drop_column('tasks', 'batch_position')
    op.drop_column('tasks', 'batch_id')
    op.drop_index('uq_batches_user_idempotency_key', table_name='batches')
    op.drop_table('batches')
