"""docs/configuration.md lists every setting once, under its real name, with its real default,
and its meaning opens with the setting's own `description` in shared/settings.py, word for
word; the rest of the cell is the why (the measured number behind the default)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from shared.settings import Settings

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<name>[A-Z_]+)` \| (?P<default>[^|]*) \|(?P<meaning>.*)\|$")


def env_name(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"SCAN_{name.upper()}"


def documented() -> dict[str, tuple[str, str]]:
    """Each documented variable's (default cell, meaning cell)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            assert match["name"] not in rows, f"{match['name']} is documented twice"
            rows[match["name"]] = (match["default"].strip(), match["meaning"].strip())
    return rows


def test_every_setting_is_documented_and_nothing_else() -> None:
    expected = {env_name(name, field) for name, field in Settings.model_fields.items()}
    assert set(documented()) == expected


def test_documented_defaults_are_the_real_ones() -> None:
    rows = documented()
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        literal = rows[env_name(name, field)][0].strip("`")
        if isinstance(default, bool):
            assert literal == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(literal) == default, name
        elif isinstance(default, str):
            assert literal == default, name
        elif isinstance(default, list) and default:
            assert literal.split(",") == [
                f"{item:g}" if isinstance(item, float) else str(item) for item in default
            ], name
        elif default is not None and hasattr(default, "get_secret_value"):
            assert literal == default.get_secret_value(), name


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_documented_meaning_opens_with_the_description() -> None:
    rows = documented()
    wrong = []
    for name, field in Settings.model_fields.items():
        description = field.description or ""
        meaning = rows[env_name(name, field)][1]
        if not (meaning == description or meaning.startswith(description + " ")):
            wrong.append(f"{env_name(name, field)}: code says {description!r}")
    assert wrong == [], "\n".join(wrong)
