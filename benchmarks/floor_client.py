"""The least client of the fake server, for the floor in ``bench_run.py``: what the fixture itself costs.

    python benchmarks/floor_client.py URL REQUESTS IN_FLIGHT

``IN_FLIGHT`` keep-alive connections send ``REQUESTS`` chat completions between them (the two models of the
benchmark's suite alternate by connection); each answer is read by its Content-Length and nothing else is done:
no JSON parsed, nothing stored. Only the standard library modules this needs are imported, so its start-up is
the interpreter's.
"""

import asyncio
import json
import sys
from urllib.parse import urlsplit

MODELS = ("base", "tuned")


def floor_client(url: str, requests: int, in_flight: int) -> None:
    """The least client: ``in_flight`` keep-alive connections send ``requests`` chat completions between them (the
    models alternate by connection), each answer read by its Content-Length, nothing parsed or stored."""
    parts = urlsplit(url)
    bodies = [json.dumps({"model": f"{name}-model", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is a deductible?"}]}).encode() for name in MODELS]
    heads = [f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]

    async def connection(k: int, n: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        for _ in range(n):
            writer.write(heads[k % len(heads)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
        writer.close()

    async def main() -> None:
        share, extra = divmod(requests, in_flight)
        await asyncio.gather(*(connection(k, share + (k < extra)) for k in range(in_flight)))

    asyncio.run(main())


if __name__ == "__main__":
    floor_client(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
