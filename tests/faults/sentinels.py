"""A Redis primary, its replica and three Sentinels on 127.0.0.1, as a failover test needs them.

The replica replicates through `ReplicationLink`, a relay the test can hold: while held, what
the primary sends its replica is dropped, so the replica misses every write from then on, as a
replica lagging behind a primary that dies does. The Sentinels find the replica at its own
address (the primary reports it) and promote it when the primary is killed.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.sentinel import Sentinel

from shared.embedded import free_port, redis_server_binary
from tests.helpers import wait_until

MASTER = "mymaster"
# Small, so a failover takes about a second; Sentinel's default is 30 s.
DOWN_AFTER_MS = 500
START_DEADLINE_S = 10.0
CHUNK_BYTES = 65536


@dataclass
class ReplicationLink:
    """Forwards the replica's connection to the primary; `hold()` drops what the primary sends."""

    primary_port: int
    port: int = field(default_factory=free_port)
    held: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    dropped_bytes: int = 0

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.thread = threading.Thread(target=self._serve, name="replication-link", daemon=True)
        self.thread.start()

    def hold(self) -> None:
        self.held.set()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self.closed.is_set():
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        self._accept(selector, peers)
                    else:
                        self._forward(selector, peers, sock)
        finally:
            for sock in peers:
                sock.close()
            selector.close()

    def _accept(
        self, selector: selectors.BaseSelector, peers: dict[socket.socket, socket.socket]
    ) -> None:
        replica, _ = self.listener.accept()
        try:
            primary = socket.create_connection(("127.0.0.1", self.primary_port))
        except OSError:
            # The primary is gone: the replica finds the link broken, as it would.
            replica.close()
            return
        peers[replica], peers[primary] = primary, replica
        selector.register(replica, selectors.EVENT_READ, data="to_primary")
        selector.register(primary, selectors.EVENT_READ, data="to_replica")

    def _forward(
        self,
        selector: selectors.BaseSelector,
        peers: dict[socket.socket, socket.socket],
        sock: socket.socket,
    ) -> None:
        try:
            data = sock.recv(CHUNK_BYTES)
        except OSError:
            data = b""
        other = peers.get(sock)
        if not data or other is None:
            for end in (sock, other):
                if end is not None and end in peers:
                    selector.unregister(end)
                    peers.pop(end)
                    end.close()
            return
        if selector.get_key(sock).data == "to_replica" and self.held.is_set():
            self.dropped_bytes += len(data)
            return
        with contextlib.suppress(OSError):
            other.sendall(data)


@dataclass
class RedisNode:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: no shutdown code, no last write to anyone, as when its node dies."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class SentinelCluster:
    primary: RedisNode
    replica: RedisNode
    sentinels: list[RedisNode]
    link: ReplicationLink

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def client(self) -> redis.Redis:
        """A client of whichever node the Sentinels call the primary."""
        sentinel = Sentinel([("127.0.0.1", node.port) for node in self.sentinels])
        client: redis.Redis = sentinel.master_for(MASTER, socket_timeout=2.0)
        return client

    def primary_port(self) -> int:
        """The primary's port, as the first Sentinel that answers says."""
        for node in self.sentinels:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=node.port) as client:
                _host, port = client.sentinel_get_master_addr_by_name(MASTER)
                return int(port)
        raise AssertionError("no Sentinel answers")

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            node.stop()
        self.link.close()


def _start(name: str, directory: Path, args: list[str], conf: Path | None = None) -> RedisNode:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [redis_server_binary(), *([str(conf)] if conf else []), "--port", str(port)]
    command += ["--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--logfile", str(directory / f"{name}.log"), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    node = RedisNode(name, port, process)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited: {(directory / f'{name}.log').read_text()}")
        with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
            return bool(client.ping())
        return False

    wait_until(answers, START_DEADLINE_S, f"{name} to answer")
    return node


def _sentinel_conf(directory: Path, primary_port: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    return conf


@contextlib.contextmanager
def sentinel_cluster(base_dir: Path) -> Iterator[SentinelCluster]:
    """A primary, a replica following it through a `ReplicationLink`, and three Sentinels
    that all know both; stopped (whatever is left of them) at the end."""
    plain = ["--save", "", "--appendonly", "no"]
    nodes: list[RedisNode] = []
    link: ReplicationLink | None = None
    try:
        primary = _start("primary", base_dir / "primary", plain)
        nodes.append(primary)
        link = ReplicationLink(primary.port)
        link.start()
        replica = _start(
            "replica", base_dir / "replica", [*plain, "--replicaof", "127.0.0.1", str(link.port)]
        )
        nodes.append(replica)
        for index in range(3):
            directory = base_dir / f"sentinel-{index}"
            conf = _sentinel_conf(directory, primary.port)
            nodes.append(_start(f"sentinel-{index}", directory, ["--sentinel"], conf))
        cluster = SentinelCluster(primary, replica, nodes[2:], link)
        wait_until(lambda: _ready(cluster), START_DEADLINE_S, "the Sentinels to know the replica")
        yield cluster
    finally:
        if link is not None:
            link.close()
        for node in nodes:
            node.stop()


def _ready(cluster: SentinelCluster) -> bool:
    """The replica is in sync and every Sentinel knows it and the other two Sentinels."""
    with redis.Redis(port=cluster.replica.port) as replica:
        if replica.info("replication").get("master_link_status") != "up":
            return False
    for node in cluster.sentinels:
        with redis.Redis(port=node.port) as sentinel:
            master = sentinel.sentinel_master(MASTER)
            if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                return False
    return True


def wait_for_failover(cluster: SentinelCluster, deadline_s: float) -> float:
    """Until the Sentinels name the replica as primary and it takes writes; when (time.time())."""

    def named_by(port: int) -> bool:
        """This Sentinel names the replica, in a state clients accept (not flagged down)."""
        with redis.Redis(port=port) as sentinel:
            state = sentinel.sentinel_master(MASTER)
        up = state["is_master"] and not (state["is_sdown"] or state["is_odown"])
        return bool(up and int(state["port"]) == cluster.replica.port)

    def promoted() -> bool:
        with redis.Redis(port=cluster.replica.port) as replica:
            if replica.info("replication").get("role") != "master":
                return False
        return all(named_by(node.port) for node in cluster.sentinels)

    wait_until(promoted, deadline_s, "the replica to be promoted", every_s=0.05)
    return time.time()
