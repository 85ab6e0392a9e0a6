"""recurring schedules: schedules and the runs they made

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



def upgrade() -> None:
    op.create_table(
        'schedules',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('name', sa.Text(), nullable=True),
        sa.Column('cron', sa.Text(), nullable=True),
        sa.Column('timezone', sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column('interval_s', sa.Integer(), nullable=True),
        sa.Column('anchor_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('domains', postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('callback_url', sa.Text(), nullable=True),
        sa.Column('callback_changes_only', sa.Boolean(), server_default=sa.text('false'),
                  nullable=False),
        sa.Column('missed', sa.Text(), server_default=sa.text("'run_once'"), nullable=False),
        sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_fired_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.CheckConstraint('(cron IS NULL) <> (interval_s IS NULL)',
                           name=op.f('ck_schedules_cron_or_interval')),
        sa.CheckConstraint("missed IN ('run_once', 'skip')", name=op.f('ck_schedules_missed_known')),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_schedules_user_id_users'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules')),
    )
    # The firing claim: due, unpaused schedules, earliest first. Paused ones have no next
    # fire time and are not in the index at all, so an idle schedule costs no scan.
    op.create_index('ix_schedules_due', 'schedules', ['next_fire_at'],
                    postgresql_where=sa.text('next_fire_at IS NOT NULL'))
    op.create_index('ix_schedules_user', 'schedules', ['user_id', 'created_at'])
    op.create_table(
        'schedule_runs',
        sa.Column('id', sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column('schedule_id', sa.UUID(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('tick_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('fired_at', sa.DateTime(timezone=True),
                  server_default=sa.text('clock_timestamp()'), nullable=False),
        sa.Column('missed_ticks', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('batch_id', sa.UUID(), nullable=True),
        sa.Column('skipped_reason', sa.Text(), nullable=True),
        sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('changes', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'],
                                name=op.f('fk_schedule_runs_schedule_id_schedules'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'],
                                name=op.f('fk_schedule_runs_batch_id_batches'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_runs')),
    )
    # A tick is fired at most once, whatever a relay does: the database refuses a second.
    op.create_index('uq_schedule_runs_tick', 'schedule_runs', ['schedule_id', 'tick_at'],
                    unique=True)
    # Runs whose batch has not been compared with the previous run yet (few at a time).
    op.create_index('ix_schedule_runs_unreported', 'schedule_runs', ['id'],
                    postgresql_where=sa.text('reported_at IS NULL AND batch_id IS NOT NULL'))
    op.create_index('ix_schedule_runs_batch', 'schedule_runs', ['batch_id'],
                    postgresql_where=sa.text('batch_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_table('schedule_runs')
    op.drop_table('schedules')
