"""Dramatiq's private API that scan-outbox relies on (`shared.dramatiq_private`) is what it was
when that module was written: these fail when the library changes under it.

A fingerprint is the SHA-256 of the source (or Lua script) of a piece the module reads or
extends. When one changes, read the new code against `shared/dramatiq_private.py`, run the
integration tests of the pipelined relay, the batched acks and the async worker, and only then
record the new fingerprint (and the series, if it moved).
"""

from __future__ import annotations

import hashlib
import inspect
import pathlib

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.worker import ConsumerThread, Worker, WorkerThread

from shared import dramatiq_private

FINGERPRINTS = {
    "dispatch.lua": "ba4d872e4fb204eb",
    "RedisBroker.__init__": "f5bb0f17925f821a",
    "RedisBroker._dispatch": "ee77793d07f17bbe",
    "RedisBroker._should_do_maintenance": "12c5be867fd067ad",
    "RedisBroker._max_unpack_size": "502754eaaa6b949e",
    "RedisBroker.consume": "1b12ab3db95da1ec",
    "RedisBroker.consumer_class": "43d97c3b7d756fe2",
    "_RedisConsumer": "6385e191ba400ad4",
    "ConsumerThread": "0df6272466a15401",
    "Worker": "1be04e3657fc5584",
    "WorkerThread.__init__": "293a02c845bbc59e",
}


def _sources() -> dict[str, bytes]:
    # No connection is made: registering a script only hashes it.
    broker = RedisBroker(client=redis.Redis())  # type: ignore[no-untyped-call]
    dispatch: bytes = broker.scripts["dispatch"].script
    consumer_class = RedisBroker.consumer_class
    assert isinstance(consumer_class, property)
    assert consumer_class.fget is not None
    pieces: dict[str, object] = {
        "RedisBroker.__init__": RedisBroker.__init__,
        "RedisBroker._dispatch": RedisBroker._dispatch,
        "RedisBroker._should_do_maintenance": RedisBroker._should_do_maintenance,
        "RedisBroker._max_unpack_size": RedisBroker._max_unpack_size,
        "RedisBroker.consume": RedisBroker.consume,
        "RedisBroker.consumer_class": consumer_class.fget,
        "_RedisConsumer": _RedisConsumer,
        "ConsumerThread": ConsumerThread,
        "Worker": Worker,
        "WorkerThread.__init__": WorkerThread.__init__,
    }
    sources = {name: inspect.getsource(piece).encode() for name, piece in pieces.items()}  # type: ignore[arg-type]
    return {"dispatch.lua": dispatch, **sources}


def test_the_installed_dramatiq_is_the_series_the_private_api_module_supports() -> None:
    assert dramatiq.__version__.startswith(dramatiq_private.SUPPORTED_SERIES)
    assert dramatiq_private.SUPPORTED


def test_every_private_piece_the_module_relies_on_is_unchanged() -> None:
    found = {name: hashlib.sha256(source).hexdigest()[:16] for name, source in _sources().items()}
    changed = {name: digest for name, digest in found.items() if FINGERPRINTS[name] != digest}
    assert not changed, f"Dramatiq changed under shared/dramatiq_private.py: {changed}"


def test_the_module_names_the_broker_consumer_the_worker_extends() -> None:
    assert (
        dramatiq_private.RedisConsumer
        is RedisBroker(  # type: ignore[no-untyped-call]
            client=redis.Redis()
        ).consumer_class
    )


def test_no_other_module_touches_dramatiqs_private_names() -> None:
    root = pathlib.Path(__file__).resolve().parents[3]
    private = (
        "_RedisConsumer",
        "._dispatch(",
        "_max_unpack_size",
        "_should_do_maintenance",
        ".scripts[",
        "broker.client",
        ".work_queue",
        "queued_message_ids",
    )
    offenders = []
    for package in ("api_service", "relay_service", "worker_service", "shared"):
        for path in (root / package).rglob("*.py"):
            if path.name == "dramatiq_private.py":
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(root)}: {name}" for name in private if name in text]
    assert not offenders


def test_the_script_arguments_are_those_the_broker_passes_its_dispatch_script() -> None:
    broker = RedisBroker(client=redis.Redis())  # type: ignore[no-untyped-call]
    passed: list[list[object]] = []
    broker.scripts["dispatch"] = lambda keys, args: passed.append(args)
    broker.scripts["maxstack"] = lambda: 8000  # what Redis would answer, without a Redis
    broker.maintenance_chance = 0
    broker._dispatch("ack")("scans", "message-id")  # type: ignore[no-untyped-call]
    [args] = passed
    built = dramatiq_private.script_args(broker, "ack", "scans", ("message-id",), now_ms=args[1])
    assert built == args
    # The leader's maintenance run differs only where it says so.
    forced = dramatiq_private.script_args(
        broker, "requeue", "scans", heartbeat_timeout_ms=5, do_maintenance=True, now_ms=args[1]
    )
    assert forced == ["requeue", args[1], "scans", args[3], 5, args[5], 1, args[7]]
