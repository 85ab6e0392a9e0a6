import pytest

from relay_service.relay import publish_backoff_s


@pytest.mark.parametrize(("attempts", "nominal"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)])
def test_backoff_doubles_per_attempt_within_jitter(attempts: int, nominal: float) -> None:
    for _ in range(50):
        delay = publish_backoff_s(attempts, base_s=1.0, max_s=300.0)
        assert nominal * 0.8 <= delay <= nominal * 1.2


def test_backoff_never_exceeds_the_cap() -> None:
    assert all(publish_backoff_s(40, base_s=1.0, max_s=30.0) <= 30.0 for _ in range(50))
