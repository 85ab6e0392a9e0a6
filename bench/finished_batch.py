"""A batch whose tasks have all ended with a report, written straight to the tables: what the
export benchmark and the export's memory test read, at any size, in seconds."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# About the size and shape of a real report (a page over HTTPS with its chain, headers and
# certificate, a few findings): 1.3 KB as JSON.
REPORT: dict[str, object] = {
    "domain": "",
    "dns": {"a": ["192.0.2.10"], "aaaa": [], "cname": None, "mx": ["mx.example.net"]},
    "https": {
        "url": "https://www.example.com/",
        "status": 200,
        "elapsed_ms": 184,
        "title": "Example Domain — Welcome",
        "body_bytes": 48213,
        "truncated": False,
        "redirects": ["https://example.com/"],
        "chain": [
            {"url": "https://example.com/", "status": 301, "elapsed_ms": 61},
            {"url": "https://www.example.com/", "status": 200, "elapsed_ms": 123},
        ],
        "security_headers": {
            "present": {"strict-transport-security": "max-age=31536000"},
            "missing": ["content-security-policy", "x-frame-options", "referrer-policy"],
        },
        "tls": {
            "version": "TLSv1.3",
            "issuer": "CN=Example CA,O=Example",
            "not_after": "2027-03-01T00:00:00+00:00",
            "expires_in_days": 84,
        },
    },
    "http": {"url": "https://www.example.com/", "status": 200, "elapsed_ms": 90, "title": None},
    "findings": [
        {"rule": "keyword", "pattern": "login", "count": 2},
        {"rule": "regex", "pattern": "api[_-]?key", "count": 1},
    ],
    "rules_applied_to": "https://www.example.com/",
    "elapsed_ms": 412,
}

_SEED_SQL = text(
    """
    WITH new_batch AS (
        INSERT INTO batches (id, user_id, config, task_count, request_hash)
        VALUES (:batch_id, :user_id, '{}'::jsonb, :count, 'seeded')
        RETURNING id
    )
    INSERT INTO tasks (id, user_id, target_domain, config, status, attempts, max_attempts,
                       batch_id, batch_position, result, started_at, finished_at, updated_at)
    SELECT gen_random_uuid(), :user_id, 'site-' || g || '.example.com', '{}'::jsonb,
           'succeeded', 1, 3, b.id, g - 1,
           jsonb_set(CAST(:report AS jsonb), '{domain}', to_jsonb('site-' || g || '.example.com')),
           now(), now(), now()
    FROM new_batch b, generate_series(1, :count) g
    """
)


async def seed_finished_batch(session: AsyncSession, user_id: int, count: int) -> uuid.UUID:
    """A batch of `count` succeeded tasks of `user_id`, each with a REPORT; its id."""
    batch_id = uuid.uuid4()
    params = {
        "batch_id": batch_id,
        "user_id": user_id,
        "count": count,
        "report": json.dumps(REPORT),
    }
    await session.execute(_SEED_SQL, params)
    return batch_id
