from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from shared.settings import get_settings
from worker_service import broker as worker_broker
from worker_service.idle_poll import WORKER_THREAD_TIMEOUT_S, IdlePollCap


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    broker = StubBroker(middleware=[])
    broker.declare_queue("scans")
    yield broker
    broker.close()


def test_the_cap_reaches_the_consumers_and_not_the_worker_threads(stub_broker: StubBroker) -> None:
    stub_broker.add_middleware(IdlePollCap(7))
    worker = dramatiq.Worker(stub_broker, worker_threads=2, worker_timeout=1000)
    worker.start()
    try:
        assert {consumer.worker_timeout for consumer in worker.consumers.values()} == {7}
        assert {thread.timeout for thread in worker.workers} == {WORKER_THREAD_TIMEOUT_S}
    finally:
        worker.stop(timeout=1000)


def test_a_cap_below_one_millisecond_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 ms"):
        IdlePollCap(0)


def test_the_worker_broker_caps_the_idle_poll_from_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCAN_WORKER_IDLE_POLL_MS", "23")
    get_settings.cache_clear()
    previous = dramatiq.get_broker()
    try:
        installed = worker_broker.install_broker()
        caps = [m.poll_ms for m in installed.middleware if isinstance(m, IdlePollCap)]
        assert caps == [23]
        installed.client.connection_pool.disconnect()
    finally:
        dramatiq.set_broker(previous)
        get_settings.cache_clear()
