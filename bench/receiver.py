"""`python -m bench.receiver --port P --delay-ms D`: a callback receiver for benchmarks.

Answers every request `204` after `--delay-ms` (a receiver's own work), on raw keep-alive
sockets so that it costs little CPU. Prints nothing; runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(delay_s)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _main(port: int, delay_s: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_one(r, w, delay_s), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    uvloop.run(_main(args.port, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
