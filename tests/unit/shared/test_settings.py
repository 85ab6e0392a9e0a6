import pytest
from pydantic import SecretStr, ValidationError

from shared.db.engine import pooled_connect_args, transaction_limits
from shared.settings import Settings, to_asyncpg_dsn, to_sqlalchemy_url


def test_database_url_is_adapted_for_sqlalchemy_and_asyncpg() -> None:
    url = "postgresql://u:p@/db?host=/run/pg"
    assert to_sqlalchemy_url(url) == "postgresql+asyncpg://u:p@/db?host=/run/pg"
    assert to_asyncpg_dsn("postgresql+asyncpg://u:p@h/db") == "postgresql://u:p@h/db"


def test_environment_names_are_unprefixed_for_urls_and_prefixed_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@b/c")
    monkeypatch.setenv("SCAN_RELAY_BATCH_SIZE", "7")
    monkeypatch.setenv("SCAN_RESOLVER_OVERRIDES", "example.com=127.0.0.1, Other.ORG.=::1")
    monkeypatch.setenv("SCAN_SCHEMES", "http")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url.get_secret_value() == "postgresql://a@b/c"
    assert settings.relay_batch_size == 7
    assert settings.resolver_overrides == {"example.com": "127.0.0.1", "other.org": "::1"}
    assert settings.schemes == ["http"]


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = Settings(database_url="postgresql://user:hunter2@db/x", _env_file=None)  # type: ignore[arg-type, call-arg]
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCAN_SCHEMES", "ftp"),
        ("SCAN_RESOLVER_OVERRIDES", "no-equals-sign"),
        ("SCAN_RELAY_BATCH_SIZE", "0"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert name.removeprefix("SCAN_").lower() in str(caught.value)


def test_redis_safeguards_are_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).redis_safeguards is True  # type: ignore[call-arg]
    monkeypatch.setenv("SCAN_REDIS_SAFEGUARDS", "false")
    assert Settings(_env_file=None).redis_safeguards is False  # type: ignore[call-arg]


def test_the_direct_url_defaults_to_the_database_url_and_says_when_it_is_no_session() -> None:
    pooled = Settings(
        database_url="postgresql://app@pgbouncer:6432/db",  # type: ignore[arg-type]
        database_pool_mode="transaction",
        _env_file=None,  # type: ignore[call-arg]
    )
    assert pooled.direct_url == "postgresql://app@pgbouncer:6432/db"
    assert not pooled.has_session_url
    direct = pooled.model_copy(
        update={"database_direct_url": SecretStr("postgresql://app@postgres:5432/db")}
    )
    assert direct.has_session_url
    assert direct.direct_sqlalchemy_url == "postgresql+asyncpg://app@postgres:5432/db"
    assert Settings(_env_file=None).has_session_url  # type: ignore[call-arg]


def test_behind_a_transaction_pooler_nothing_is_set_at_connection_start() -> None:
    settings = Settings(database_pool_mode="transaction", _env_file=None)  # type: ignore[call-arg]
    args = pooled_connect_args(settings)
    assert args["server_settings"] == {}
    assert args["statement_cache_size"] == 0
    assert args["prepared_statement_cache_size"] == 0
    names = {args["prepared_statement_name_func"]() for _ in range(3)}
    assert len(names) == 3
    assert transaction_limits(settings) == {
        "statement_timeout": "30000",
        "idle_in_transaction_session_timeout": "15000",
    }


def test_comma_separated_settings_split_from_the_environment_without_blanks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26380, s2,,")
    monkeypatch.setenv("SCAN_DNS_NAMESERVERS", "10.0.0.53, [::1]:5353")
    monkeypatch.setenv("SCAN_SCHEMES", " https ,http")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_sentinels == ["s1:26380", "s2"]
    assert settings.dns_nameservers == ["10.0.0.53", "[::1]:5353"]
    assert settings.schemes == ["https", "http"]


@pytest.mark.parametrize(
    ("name", "refused", "accepted"),
    [
        ("SCAN_RELAY_POLL_INTERVAL_S", "0", "0.001"),
        ("SCAN_LOCK_WAIT_S", "-0.5", "0"),
        ("SCAN_RELAY_BATCH_SIZE", "0", "1"),
        ("SCAN_RATE_LIMIT_PER_MINUTE", "-1", "0"),
        ("SCAN_API_PORT", "0", "65535"),
        ("SCAN_API_PORT", "65536", "1"),
        ("SCAN_RELAY_HEALTH_PORT", "65536", "0"),
        ("SCAN_MAX_BODY_BYTES", "1023", "1024"),
        # A kind's bound and the setting's own together.
        ("SCAN_BATCH_MAX_TASKS", "10001", "10000"),
        ("SCAN_BATCH_MAX_TASKS", "0", "1"),
    ],
)
def test_each_kind_of_setting_keeps_its_bounds(
    monkeypatch: pytest.MonkeyPatch, name: str, refused: str, accepted: str
) -> None:
    field = name.removeprefix("SCAN_").lower()
    monkeypatch.setenv(name, refused)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert field in str(caught.value)
    monkeypatch.setenv(name, accepted)
    assert float(getattr(Settings(_env_file=None), field)) == float(accepted)  # type: ignore[call-arg]
