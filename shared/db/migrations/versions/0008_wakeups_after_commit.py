"""wake-ups leave the commit: no trigger calls pg_notify any more

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A transaction that called pg_notify commits under PostgreSQL's one notify lock, held
# through its WAL flush: every such commit on the server waits for the one before it, and
# group commit stops. The wake-ups are now Redis hints sent after the commit
# (shared/wakeups.py); the deliveries trigger keeps its business work, without the NOTIFY.
CALLBACKS_FUNCTION = """
CREATE OR REPLACE FUNCTION task_finished_callbacks() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END;
$$
"""

# The previous definitions, for the downgrade.
CALLBACKS_FUNCTION_NOTIFYING = """
CREATE OR REPLACE FUNCTION task_finished_callbacks() RETURNS trigger LANGUAGE plpgsql AS $$
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
OUTBOX_NOTIFY_FUNCTION = """
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scan_outbox', '');
    RETURN NULL;
END;
$$
"""
OUTBOX_NOTIFY_TRIGGER = """
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()
"""
FINISH_NOTIFY_FUNCTION = """
CREATE FUNCTION task_finished_notify() RETURNS trigger LANGUAGE plpgsql AS $$
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


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox_notify()")
    op.execute("DROP TRIGGER IF EXISTS task_finished_notify ON tasks")
    op.execute("DROP FUNCTION IF EXISTS task_finished_notify()")
    # Replacing a function's body takes no lock on the table its trigger is on.
    op.execute(CALLBACKS_FUNCTION)


def downgrade() -> None:
    op.execute(CALLBACKS_FUNCTION_NOTIFYING)
    op.execute(FINISH_NOTIFY_FUNCTION)
    op.execute(FINISH_NOTIFY_TRIGGER)
    op.execute(OUTBOX_NOTIFY_FUNCTION)
    op.execute(OUTBOX_NOTIFY_TRIGGER)
