"""The API under test as a child process, and the one HTTP client that talks to it.

`ApiProcess` starts `opskit serve` on a free port, waits until it answers its health check and
stops it; every benchmark that needs a server of its own (loadtest, bench, bench-api, soak) uses
it. Requests go through httpx, imported where they are sent: `opskit --help` imports the
benchmarking verbs' modules and must stay light.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from opskit.core.errors import ConnectFailed, EnvironmentProblem
from opskit.core.servers import free_port
from opskit.core.settings import Settings, mask_url

HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 120  # a loaded 2-core machine is slow to import and open the pool
STOP_TIMEOUT_S = 15


def check_api(url: str, timeout_s: float = 5.0) -> dict:
    """GET /api/health; raise ConnectFailed (exit 3) when the API does not answer 200."""
    import httpx

    try:
        response = httpx.get(f"{url}/api/health", timeout=timeout_s)
    except (httpx.HTTPError, ValueError) as err:
        raise ConnectFailed(
            f"the API at {mask_url(url)} is unreachable: {err}",
            hint="start it with `opskit serve --mode M --port P`, or leave out --url",
        ) from err
    if response.status_code != 200:
        raise ConnectFailed(
            f"the API at {mask_url(url)} answered its health check with {response.status_code}",
            hint="see the server's log",
        )
    try:
        return response.json()
    except ValueError:
        return {}


def server_env(
    settings: Settings,
    database_url: str,
    redis_url: str,
    *,
    redis_prefix: str | None = None,
    jwt_secret: str | None = None,
) -> dict[str, str]:
    """The environment of a child opskit process (`serve`, the daemon): this process's, without
    its OPSKIT_* variables, plus these servers, our OPSKIT_HOME, the Redis prefix (ours unless
    given) and the JWT secret of the tokens we mint (ours unless given)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPSKIT_")}
    env.update(
        OPSKIT_DATABASE_URL=database_url,
        OPSKIT_REDIS_URL=redis_url,
        OPSKIT_HOME=str(settings.home),
        OPSKIT_REDIS_PREFIX=settings.redis_prefix if redis_prefix is None else redis_prefix,
    )
    secret = jwt_secret or settings.jwt_secret
    if secret is not None:
        env["OPSKIT_JWT_SECRET"] = secret
    return env


class ApiProcess:
    """`opskit serve --mode M` on a free port of 127.0.0.1, its output in a log file."""

    def __init__(
        self,
        mode: str,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        pool_size: int | None = None,
        log_path: Path | None = None,
        answer_cache_s: float | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop)
        command = [sys.executable, "-m", "opskit", "serve", "--mode", mode]
        command += ["--host", HOST, "--port", str(self.port), "--workers", str(workers)]
        if pool_size is not None:
            command += ["--pool-size", str(pool_size)]
        if answer_cache_s is not None:  # else serve's default
            command += ["--answer-cache", str(answer_cache_s)]
        self.process = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_healthy(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        """Return once GET /api/health answers 200; EnvironmentProblem if it exits or never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise EnvironmentProblem(
                    f"`opskit serve` exited with code {self.process.returncode} before answering",
                    hint=self.last_line() or "run `opskit serve` by hand to see why",
                )
            try:
                check_api(self.url, timeout_s=1.0)
                return
            except ConnectFailed:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(
                        f"`opskit serve` did not answer on {self.url} within {timeout_s:.0f} s",
                        hint=self.last_line(),
                    ) from None
                time.sleep(0.1)

    def last_line(self) -> str | None:
        """The last line the server logged (for an error message)."""
        self._log.flush()
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        self._log.seek(0, os.SEEK_END)
        return lines[-1][:300] if lines else None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it outlives `timeout_s`."""
        stop_process(self.process, timeout_s)
        self._log.close()

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def api_server(
    settings: Settings,
    mode: str,
    database_url: str,
    redis_url: str,
    *,
    redis_prefix: str | None = None,
    log_path: Path | None = None,
    workers: int = 1,
    pool_size: int | None = None,
) -> Iterator[str]:
    """An `opskit serve --mode M --workers W` child process on a free port; yields its URL once
    healthy. `pool_size`: connections per worker (default: serve's)."""
    env = server_env(settings, database_url, redis_url, redis_prefix=redis_prefix)
    with ApiProcess(mode, env, workers=workers, pool_size=pool_size, log_path=log_path) as server:
        server.wait_healthy()
        yield server.url


def stop_process(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
