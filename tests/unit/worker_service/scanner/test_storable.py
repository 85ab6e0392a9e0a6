"""A report is storable whatever strings the target put in it: no NUL, no lone surrogate."""

from __future__ import annotations

import json

from worker_service.scanner.storable import REPLACEMENT, storable


def test_nul_and_surrogates_are_replaced_in_every_string_keys_included() -> None:
    report = {
        "http": {"title": "a\x00b", "chain": [{"error": "bad \ud800 byte"}]},
        "dns": {"txt": ("v=spf1\x00", "ok")},
        "present\x00": {"x-frame-options": "\udfff"},
        "count": 3,
        "trusted": None,
    }

    cleaned = storable(report)

    assert cleaned == {
        "http": {"title": f"a{REPLACEMENT}b", "chain": [{"error": f"bad {REPLACEMENT} byte"}]},
        "dns": {"txt": [f"v=spf1{REPLACEMENT}", "ok"]},
        f"present{REPLACEMENT}": {"x-frame-options": REPLACEMENT},
        "count": 3,
        "trusted": None,
    }
    # What PostgreSQL refuses in jsonb, and what UTF-8 cannot carry, are gone.
    encoded = json.dumps(cleaned)
    assert "\\u0000" not in encoded
    json.dumps(cleaned, ensure_ascii=False).encode("utf-8")


def test_ordinary_text_is_left_as_it_is() -> None:
    text = "Café — 東京 \U0001f600 tab\tnewline\n"

    assert storable({"title": text}) == {"title": text}
