import pytest

from api_service.ui.filters import parse_time, read_query
from api_service.ui.presence import parse_worker_id
from api_service.ui.rendering import fmt_duration_s, safe_next, url_host
from api_service.ui.views import RELAY_ELECTION_APP
from relay_service import leader, listener
from shared import keys


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/ui", "/ui"),
        ("/ui/tasks?status=failed", "/ui/tasks?status=failed"),
        ("/ui/outbox", "/ui/outbox"),
        (None, "/ui"),
        ("", "/ui"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("/\\evil.example", "/ui"),
        ("/uix", "/ui"),
        ("/api/v1/tasks", "/ui"),
        ("javascript:alert(1)", "/ui"),
        ("/ui\r\nSet-Cookie: x=1", "/ui"),
    ],
)
def test_only_dashboard_paths_are_followed_after_sign_in_or_an_action(
    given: str | None, kept: str
) -> None:
    assert safe_next(given) == kept


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "—"), (0.0421, "42 ms"), (12.34, "12.3 s"), (245, "4 min 05 s"), (7380, "2 h 03 min")],
)
def test_durations_read_naturally(seconds: float | None, shown: str) -> None:
    assert fmt_duration_s(seconds) == shown


def test_task_filters_keep_what_is_usable_and_name_what_is_not() -> None:
    query = read_query("failed", " bob ", "Shop", "2026-01-02T03:04", "")
    assert query.problems == []
    chosen = query.to_filter()
    assert (chosen.status, chosen.user_name, chosen.domain_contains) == ("failed", "bob", "shop")
    assert chosen.created_from == parse_time("2026-01-02T03:04+00:00")
    assert query.url("CUR") == (
        "/ui/tasks?status=failed&user=bob&domain=Shop&since=2026-01-02T03%3A04&before=CUR"
    )
    odd = read_query("exploded", "", "", "soon", "")
    assert odd.to_filter().status is None
    assert odd.to_filter().created_from is None
    assert len(odd.problems) == 2


def test_worker_broker_ids_name_their_host_and_process() -> None:
    broker_id = keys.worker_broker_id("pod-7", 42, "ab12cd34")
    assert parse_worker_id(broker_id) == ("pod-7", "42")
    assert parse_worker_id("3f1e0c9a-5c7d-4f7e-9a55-3b6f1c1d2e4f") is None
    assert parse_worker_id("scan-outbox-worker:") is None


def test_the_dashboard_recognises_the_relays_connections_by_name() -> None:
    assert leader.APPLICATION_NAME == RELAY_ELECTION_APP
    assert listener.CLIENT_NAME.startswith(keys.RELAY_APPLICATION_NAME_PREFIX)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/cb/token-in-path?key=token", "hooks.example.com"),
        ("https://hooks.example.com:8443/cb", "hooks.example.com:8443"),
        ("https://user:password@hooks.example.com/cb", "hooks.example.com"),
        ("https://[2001:db8::1]:8443/cb", "[2001:db8::1]:8443"),
        ("https://hooks.example.com:99999/cb", "hooks.example.com"),
        ("not a url", "?"),
    ],
)
def test_a_callback_url_is_shown_as_its_host_only(url: str, shown: str) -> None:
    assert url_host(url) == shown
