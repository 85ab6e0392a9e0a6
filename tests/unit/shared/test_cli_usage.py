"""scanctl's usage errors: exit code 2 and one plain `Error:` line, no box drawing."""

from __future__ import annotations

from typer.testing import CliRunner

from scanctl.main import app


def test_unknown_option_is_one_plain_error_line() -> None:
    result = CliRunner().invoke(app, ["status", "--bogus"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1] == "Error: No such option: --bogus"
    assert not any(char in result.output for char in "╭│╰")


def test_invalid_value_names_the_option() -> None:
    result = CliRunner().invoke(app, ["tasks", "list", "--limit", "x"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for '--limit'")
