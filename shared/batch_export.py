"""A whole batch's results in one streamed response: NDJSON, or CSV for spreadsheets.

The response is written chunk by chunk, each chunk one short read on a connection of its own
(keyset on the task's place in the batch), so the API holds one chunk in memory and no
connection between chunks, whatever the batch's size, and a slow reader holds nothing.
"""

from __future__ import annotations

import csv
import enum
import io
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import batches

# Rows per read: past a few hundred the round trips stop mattering (bench `batch_export`),
# and a chunk of large reports stays a few megabytes.
CHUNK_ROWS = 500

CSV_COLUMNS = (
    "task_id",
    "target_domain",
    "status",
    "attempts",
    "error",
    "created_at",
    "finished_at",
    "http_status",
    "title",
    "final_url",
    "tls_not_after",
    "findings",
    "result",
)
# A cell starting with one of these is a formula to a spreadsheet, and titles, URLs and errors
# come from the scanned sites: such cells get a leading apostrophe (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportFormat(enum.StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"

    @property
    def media_type(self) -> str:
        return "application/x-ndjson" if self is ExportFormat.NDJSON else "text/csv; charset=utf-8"


def inert(value: Any) -> Any:
    """A cell a spreadsheet shows as text, never runs."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_header() -> bytes:
    return _csv_bytes([CSV_COLUMNS])


def csv_chunk(rows: Sequence[Any]) -> bytes:
    return _csv_bytes(
        [
            (
                row.id,
                inert(row.target_domain),
                row.status,
                row.attempts,
                inert(row.error),
                row.created_at.isoformat(),
                row.finished_at.isoformat() if row.finished_at else None,
                row.http_status,
                inert(row.title),
                inert(row.final_url),
                row.tls_not_after,
                row.findings,
                row.result,
            )
            for row in rows
        ]
    )


def ndjson_chunk(rows: Sequence[Any]) -> bytes:
    return "".join(f"{row.line}\n" for row in rows).encode()


def _csv_bytes(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


async def stream(
    sessionmaker: async_sessionmaker[AsyncSession],
    batch_id: uuid.UUID,
    export_format: ExportFormat,
    chunk_rows: int = CHUNK_ROWS,
) -> AsyncIterator[bytes]:
    """The batch's tasks in submission order, encoded chunk by chunk."""
    if export_format is ExportFormat.CSV:
        yield csv_header()
    read = (
        batches.read_result_rows if export_format is ExportFormat.CSV else batches.read_result_lines
    )
    encode = csv_chunk if export_format is ExportFormat.CSV else ndjson_chunk
    after = -1
    while True:
        async with sessionmaker() as session:
            rows = await read(session, batch_id, after_position=after, limit=chunk_rows)
        if not rows:
            return
        yield encode(rows)
        if len(rows) < chunk_rows:
            return
        after = rows[-1].batch_position
