"""The request path alone: tunebench's HTTP transport against aiohttp (when installed), no engine, no store.

Two "models" each send ``--cases`` chat requests to ``tests/fakeserver.py`` (its own process, ``--latency-ms``)
from ``C`` workers, over keep-alive connections, and parse the JSON answer; wall time is compared with the
latency bound (cases × 2 × latency ÷ in-flight). This is the floor under ``bench_run.py``'s whole-process figures:
what any client spends on the wire and in its own per-request CPU.

    python benchmarks/bench_transport.py                 # 50 ms; 16 and 64 in flight
    python benchmarks/bench_transport.py --latency-ms 0  # requests/s
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import Server

from tunebench.runners.transport import Transport, request_head


async def with_transport(url: str, cases: int, per_model: int) -> None:
    async def model(name: str) -> None:
        transport = Transport(url, limit=per_model, timeout_s=30)
        path = url.split("/", 3)[3]
        head = request_head("POST", f"/{path}", {"host": url.split("/")[2], "content-type": "application/json"})
        jobs = iter(range(cases))

        async def worker() -> None:
            for i in jobs:
                body = orjson.dumps({"model": name, "messages": [{"role": "user", "content": f"question {i}"}]})
                orjson.loads((await transport.post(head, body)).body)

        await asyncio.gather(*(worker() for _ in range(per_model)))
        transport.close()

    await asyncio.gather(model("base"), model("tuned"))


async def with_aiohttp(url: str, cases: int, per_model: int) -> None:
    import aiohttp

    async def model(name: str) -> None:
        jobs = iter(range(cases))
        connector = aiohttp.TCPConnector(limit=per_model)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
            async def worker() -> None:
                for i in jobs:
                    body = orjson.dumps({"model": name, "messages": [{"role": "user", "content": f"question {i}"}]})
                    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                        orjson.loads(await r.read())

            await asyncio.gather(*(worker() for _ in range(per_model)))

    await asyncio.gather(model("base"), model("tuned"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--per-model", default="8,32", help="workers per model, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clients = {"tunebench transport": with_transport}
    try:
        import aiohttp  # noqa: F401

        clients["aiohttp"] = with_aiohttp
    except ImportError:
        print("aiohttp is not installed: measuring tunebench's transport only", file=sys.stderr)
    server = Server(args.latency_ms)
    try:
        url = server.url + "/chat/completions"
        print("| client | in flight | requests | wall s (median) | requests/s | bound s | wall/bound |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for per_model in (int(c) for c in args.per_model.split(",")):
            for name, client in clients.items():
                walls = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    asyncio.run(client(url, args.cases, per_model))
                    walls.append(time.perf_counter() - started)
                wall = statistics.median(walls)
                requests = 2 * args.cases
                bound = requests * args.latency_ms / 1000 / (2 * per_model)
                ratio = f"{wall / bound:.3f}" if bound else "–"
                print(f"| {name} | {2 * per_model} | {requests:,} | {wall:.2f} | {requests / wall:,.0f} | "
                      f"{bound:.2f} | {ratio} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
