"""The API under test as a child process: start `opskit serve` on a free port, wait until it
answers its health check, stop it. Every benchmark that needs a server of its own uses this."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opskit.core.errors import ConnectFailed, EnvironmentProblem
from opskit.core.servers import free_port
from opskit.core.settings import Settings, mask_url

HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 120  # a loaded 2-core machine is slow to import and open the pool


def check_api(url: str, timeout_s: float = 5.0) -> dict:
    """GET /api/health; raise ConnectFailed (exit 3) when the API does not answer 200."""
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout_s) as response:
            body = response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise ConnectFailed(
            f"the API at {mask_url(url)} is unreachable: {reason}",
            hint="start it with `opskit serve --mode M --port P`, or leave out --url",
        ) from err
    try:
        return json.loads(body)
    except ValueError:
        return {}


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
    """An `opskit serve --mode M --workers W` subprocess on a free port; yields its URL once
    healthy. `pool_size`: connections per worker (default: serve's)."""
    port = free_port()
    env = {
        **os.environ,
        "OPSKIT_DATABASE_URL": database_url,
        "OPSKIT_REDIS_URL": redis_url,
        "OPSKIT_HOME": str(settings.home),  # the same JWT secret as the tokens we mint
    }
    if redis_prefix is not None:
        env["OPSKIT_REDIS_PREFIX"] = redis_prefix
    command = [sys.executable, "-m", "opskit", "serve", "--mode", mode]
    command += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    if pool_size is not None:
        command += ["--pool-size", str(pool_size)]
    with _log_file(log_path) as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://{HOST}:{port}"
            _wait_healthy(server, url, log)
            yield url
        finally:
            stop_process(server)


@contextmanager
def _log_file(path: Path | None):
    if path is None:
        with tempfile.TemporaryFile() as log:
            yield log
    else:
        with path.open("w+b") as log:  # read back for the error line
            yield log


def _wait_healthy(server: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise EnvironmentProblem(
                f"`opskit serve` exited with code {server.returncode} before answering",
                hint=_tail(log) or "run `opskit serve` by hand to see why",
            )
        try:
            check_api(url, timeout_s=1.0)
            return
        except ConnectFailed:
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"`opskit serve` did not answer on {url} within {SERVER_START_TIMEOUT_S} s",
                    hint=_tail(log),
                ) from None
            time.sleep(0.1)


def _tail(log) -> str | None:
    log.flush()
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else None


def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
