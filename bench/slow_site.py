"""`python -m bench.slow_site PORT DELAY_MS`: a local website that answers every request after
DELAY_MS, and never answers a host whose name starts with `hang` (held until the client leaves).

asyncio, one process of its own: hundreds of open connections cost it little, and its CPU
stays out of the process being measured. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import sys

HANG_PREFIX = b"hang"
BODY = b"<html><head><title>slow site</title></head><body>welcome</body></html>"
REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)
)


def _host(head: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            return value.strip()
    return b""


async def _serve(
    delay_s: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if _host(head).startswith(HANG_PREFIX):
            await reader.read()  # until the client gives up
            return
        await asyncio.sleep(delay_s)
        writer.write(REPLY)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int, delay_s: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve(delay_s, r, w), "127.0.0.1", port, backlog=4096
    )
    async with server:
        print("serving", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]) / 1000))
