import pytest
from pydantic import ValidationError

from api_service.ui.csrf import LoginCsrf, tokens_match
from api_service.ui.session import SessionCodec, secret_key, token_fingerprint
from shared.settings import Settings

KEY = "k" * 40


def test_a_session_round_trips_until_it_expires() -> None:
    now = [1_000_000.0]
    codec = SessionCodec(KEY, 60, clock=lambda: now[0])
    issued, value = codec.issue(7, "hash")
    loaded = codec.load(value)
    assert loaded == issued
    assert loaded.user_id == 7
    assert loaded.fingerprint == token_fingerprint("hash") != "hash"
    now[0] += 59
    assert codec.load(value) is not None
    now[0] += 1
    assert codec.load(value) is None


def test_forged_tampered_or_malformed_cookies_load_as_nothing() -> None:
    codec = SessionCodec(KEY, 60)
    _, value = codec.issue(7, "hash")
    _, foreign = SessionCodec("o" * 40, 60).issue(7, "hash")
    for bad in (None, "", "junk", _flip(value, 0), _flip(value, len(value) - 5), foreign):
        assert codec.load(bad) is None


def _flip(value: str, index: int) -> str:
    """`value` with one character changed. Not the last one: in base64 its low bits can be
    padding, so a different last character may decode to the very same signature."""
    replacement = "A" if value[index] != "A" else "B"
    return value[:index] + replacement + value[index + 1 :]


def test_each_session_gets_its_own_csrf_token() -> None:
    codec = SessionCodec(KEY, 60)
    first, _ = codec.issue(7, "hash")
    second, _ = codec.issue(7, "hash")
    assert first.csrf_token != second.csrf_token
    assert len(first.csrf_token) >= 32


def test_tokens_match_only_when_equal_and_present() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("", "")


def test_the_sign_in_form_token_must_match_its_signed_cookie() -> None:
    login = LoginCsrf(KEY)
    token, cookie = login.issue()
    assert login.check(cookie, token)
    assert not login.check(cookie, token + "x")
    assert not login.check(None, token)
    assert not login.check(LoginCsrf("o" * 40).issue()[1], token)
    other_token, _ = login.issue()
    assert not login.check(cookie, other_token)


def test_a_short_signing_key_is_refused_and_a_missing_one_is_generated() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(ui_secret_key="too-short", _env_file=None)  # type: ignore[arg-type, call-arg]
    unset = Settings(_env_file=None)  # type: ignore[call-arg]
    first, second = secret_key(unset), secret_key(unset)
    assert first != second
    assert len(first) >= 32
    given = Settings(ui_secret_key=KEY, _env_file=None)  # type: ignore[arg-type, call-arg]
    assert secret_key(given) == KEY
