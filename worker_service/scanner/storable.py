"""Making a report storable: PostgreSQL's jsonb refuses NUL (`\\u0000`) and UTF-8 has no lone
surrogates, and a page, a DNS answer or a certificate can carry either into any string."""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with each NUL and each surrogate code point replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable(value: Any) -> Any:
    """A copy of a JSON-like value whose every string, keys included, is `storable_text`.

    Dicts, lists and tuples are walked (a tuple becomes a list, as JSON would make it); other
    values are returned as they are.
    """
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
