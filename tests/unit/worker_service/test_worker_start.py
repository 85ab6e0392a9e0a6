from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from shared.settings import Settings, get_settings
from worker_service import broker as worker_broker
from worker_service.async_worker import REFUSED_EXIT, AsyncWorkerOnly, configured


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    broker = StubBroker(middleware=[])
    broker.declare_queue("scans")
    yield broker
    broker.close()


def test_the_configured_worker_caps_its_consumers_idle_sleep_at_the_setting(
    stub_broker: StubBroker,
) -> None:
    settings = Settings(worker_idle_poll_ms=23, worker_concurrency=4, worker_prefetch=1)
    # Dramatiq's CLI passes its own timeout (the `dramatiq_worker_timeout` variable).
    worker = configured(settings)(stub_broker, worker_timeout=1000)

    # What Dramatiq hands every consumer it creates as its longest idle sleep.
    assert worker.worker_timeout == 23
    assert worker.concurrency == 4


def test_dramatiqs_own_worker_is_refused_before_it_boots(stub_broker: StubBroker) -> None:
    with pytest.raises(SystemExit) as refused:
        AsyncWorkerOnly().before_worker_boot(stub_broker, dramatiq.Worker(stub_broker))

    assert refused.value.code == REFUSED_EXIT


def test_the_async_worker_is_let_through(stub_broker: StubBroker) -> None:
    worker = configured(Settings())(stub_broker)

    AsyncWorkerOnly().before_worker_boot(stub_broker, worker)


def test_the_worker_broker_checks_the_worker_before_any_other_middleware() -> None:
    get_settings.cache_clear()
    previous = dramatiq.get_broker()
    try:
        installed = worker_broker.install_broker()
        assert isinstance(installed.middleware[0], AsyncWorkerOnly)
        installed.client.connection_pool.disconnect()
    finally:
        dramatiq.set_broker(previous)
        get_settings.cache_clear()
