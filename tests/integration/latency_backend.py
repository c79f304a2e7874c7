"""A color's backend with a known latency distribution, run as a process of its own.

``python latency_backend.py PORT --seed N --low MS --high MS`` serves HTTP/1.1
(keep-alive) on 127.0.0.1:PORT with asyncio, so that its timers are not delayed by the
client's threads as they would be in the same interpreter:

- ``GET /slow`` waits the next delay of a seeded uniform draw between ``--low`` and
  ``--high`` ms, then answers as any other path below: the latency distribution is
  known in advance;
- ``GET /fail`` answers 500, ``GET /healthz`` 200 (the router's check); any other path
  answers ``--status`` (200) at once, or 500 for a seeded draw of ``--fail-rate`` of
  them (0 by default): a bad version that fails at a known rate;
- ``GET /served`` answers, for every ``/slow`` so far, how long the server took from the
  request's headers to the response's last byte (JSON list, ms): the drawn delay plus
  what the machine added, to compare with.

Used by the canary traffic tests and by benchmarks/canary_abort.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time


class Backend:
    def __init__(
        self, seed: int, low_ms: float, high_ms: float, status: int = 200, fail_rate: float = 0.0
    ) -> None:
        self.status = status
        self.rng = random.Random(seed)
        # A draw of its own, so that failing leaves the delays' sequence as it was.
        self.fail_rng = random.Random(seed + 1)
        self.fail_rate = fail_rate
        self.low_ms = low_ms
        self.high_ms = high_ms
        self.served_ms: list[float] = []

    async def answer(self, path: str) -> tuple[int, bytes]:
        if path == "/slow":
            await asyncio.sleep(self.rng.uniform(self.low_ms, self.high_ms) / 1000)
        if path == "/served":
            return 200, json.dumps(self.served_ms).encode()
        if path == "/healthz":
            return 200, b"ok"
        if path == "/fail" or (self.fail_rate and self.fail_rng.random() < self.fail_rate):
            return 500, b"failed"
        return self.status, b"ok"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                path = request_line.split(" ")[1] if " " in request_line else "/"
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in header_lines if line)
                }
                if length := int(headers.get("content-length", "0") or 0):
                    await reader.readexactly(length)
                started = time.perf_counter()
                status, body = await self.answer(path)
                reason = "Internal Server Error" if status == 500 else "OK"
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: text/plain\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if path == "/slow":
                    self.served_ms.append((time.perf_counter() - started) * 1000)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


async def serve(port: int, backend: Backend) -> None:
    server = await asyncio.start_server(backend.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--low", type=float, default=10.0)
    parser.add_argument("--high", type=float, default=70.0)
    # Another 2xx for one color tells it apart in a client that shows only the status.
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share answered 500")
    args = parser.parse_args()
    backend = Backend(args.seed, args.low, args.high, args.status, args.fail_rate)
    asyncio.run(serve(args.port, backend))


if __name__ == "__main__":
    main()
