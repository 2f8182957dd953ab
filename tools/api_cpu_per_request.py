"""CPU of one after-mode API worker per request, for a few anonymous reads, answer cache off and on.

    OPSKIT_DATABASE_URL=... OPSKIT_REDIS_URL=... python tools/api_cpu_per_request.py [N]

Starts `opskit serve --mode after --workers 1 --answer-cache 0` (then `1`) on port 18435, sends
each path N times (default 2000, after 200 of warm-up) from 8 keep-alive connections and prints
the server process's CPU time (user + system) per request. The same path over and over: with
the cache on nearly every request is a hit, so the two columns are the cost of a miss and of a
hit. `/api/health/db` (one SELECT 1 through the pool) is never cached: the stack's floor.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import psutil

PORT = 18435
PATHS = (
    "/api/health/db",
    "/api/leaderboard/projects",
    "/api/projects?sort=trending",
    "/api/projects/123",
    "/api/search?q=wallet",
    "/api/chains",
)
CONNECTIONS = 8


async def _drive(path: str, requests: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}") as client:

        async def one(count: int) -> None:
            for _ in range(count):
                answer = await client.get(path)
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: {answer.status_code}")

        await asyncio.gather(*(one(requests // CONNECTIONS) for _ in range(CONNECTIONS)))


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for cache in ("0", "1"):
        server = subprocess.Popen(
            [sys.executable, "-m", "opskit", "serve", "--mode", "after", "--port", str(PORT),
             "--workers", "1", "--answer-cache", cache],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(120):
                try:
                    httpx.get(f"http://127.0.0.1:{PORT}/api/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.5)
            process = psutil.Process(server.pid)
            for path in PATHS:
                asyncio.run(_drive(path, 200))
                cpu = sum(process.cpu_times()[:2])
                started = time.monotonic()
                asyncio.run(_drive(path, requests))
                used = sum(process.cpu_times()[:2]) - cpu
                rate = requests / (time.monotonic() - started)
                print(
                    f"answer-cache={cache} {path:30s} {1e6 * used / requests:6.0f} µs CPU/request"
                    f" {rate:7.0f} req/s"
                )
        finally:
            server.send_signal(2)
            server.wait()


if __name__ == "__main__":
    main()
