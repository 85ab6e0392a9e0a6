"""`python -m bench.loadgen`: closed-loop HTTP create load, run as its own process.

Kept apart from the API process so the client does not take the server's CPU inside
one interpreter, and written on raw keep-alive sockets (no HTTP client library) so
that at ~1,000 req/s it needs a small share of a CPU. Each of `--concurrency`
clients sends one POST at a time on its own connection, for `--duration-s`.
Prints one JSON object: completed 200/201 answers, other statuses, errors, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import uvloop


@dataclass
class Tally:
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def _request(path: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """The status of one response, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _client(args: argparse.Namespace, number: int, stop_at: float, tally: Tally) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    sent = 0
    while time.monotonic() < stop_at:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            domain = f"c{args.worker}x{number}x{sent}.example.com"
            body = json.dumps({"target_domain": domain}).encode()
            writer.write(_request(args.path, args.token, body))
            sent += 1
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        if status in (200, 201):
            tally.ok += 1
        else:
            tally.statuses[status] += 1
    if writer is not None:
        writer.close()


async def _run(args: argparse.Namespace) -> dict[str, object]:
    tally = Tally()
    started = time.monotonic()
    stop_at = started + args.duration_s
    await asyncio.gather(
        *(_client(args, number, stop_at, tally) for number in range(args.concurrency))
    )
    elapsed_s = time.monotonic() - started
    return {
        "ok": tally.ok,
        "elapsed_s": elapsed_s,
        "statuses": {str(code): count for code, count in tally.statuses.items()},
        "errors": dict(tally.errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--worker", type=int, default=0, help="tells domains of processes apart")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(uvloop.run(_run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
