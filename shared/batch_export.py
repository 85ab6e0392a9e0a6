"""A whole batch's results in one streamed response: NDJSON, or CSV for spreadsheets.

PostgreSQL builds every line (`shared/db/batches.py`): reports are never decoded and encoded
again here, which keeps an export near the database's own pace. The response is written
chunk by chunk, each chunk one short read on a connection of its own (keyset on the task's
place in the batch), so the API holds one chunk in memory and no connection between chunks,
whatever the batch's size, and a slow reader holds nothing.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import batches


class ExportFormat(enum.StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"

    @property
    def media_type(self) -> str:
        return "application/x-ndjson" if self is ExportFormat.NDJSON else "text/csv; charset=utf-8"


def csv_header() -> bytes:
    return (",".join(batches.CSV_COLUMNS) + "\r\n").encode()


def encoded(rows: Sequence[Any], line_end: str) -> bytes:
    """The lines PostgreSQL built, each ended."""
    return "".join(f"{row.line}{line_end}" for row in rows).encode()


async def stream(
    sessionmaker: async_sessionmaker[AsyncSession],
    batch_id: uuid.UUID,
    export_format: ExportFormat,
    chunk_rows: int,
) -> AsyncIterator[bytes]:
    """The batch's tasks in submission order, encoded `chunk_rows` at a time."""
    csv = export_format is ExportFormat.CSV
    if csv:
        yield csv_header()
    read = batches.read_result_records if csv else batches.read_result_lines
    line_end = "\r\n" if csv else "\n"  # RFC 4180 ends records with CRLF
    after = -1
    while True:
        async with sessionmaker() as session:
            rows = await read(session, batch_id, after_position=after, limit=chunk_rows)
        if not rows:
            return
        yield encoded(rows, line_end)
        if len(rows) < chunk_rows:
            return
        after = rows[-1].batch_position
