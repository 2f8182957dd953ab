"""`opskit soak`: every write path under load while faults are injected, then proof of convergence.

Writers (benchmarking.workload, each thread with its own connection) run the write paths, and a
few threads vote and read through `opskit serve --mode after` (so the Redis vote cache is used),
while the daemon (`python scheduler.py`, started here unless one is alive) refreshes the views.
A fault injector works through the chosen fault kinds on a schedule. At the end the writers
stop, the refresh queue drains, and `reconcile` runs, then `reconcile --fix`, then `reconcile`
again: the relations, the cache and the views must have converged to the truth.

Fault kinds (FAULT_KINDS):
- daemon_kill: SIGKILL a daemon started here while it applies a batch, start a new one;
- two_daemons: a second daemon runs alongside for a while;
- redis_flush: delete every key under OPSKIT_REDIS_PREFIX;
- flushall: FLUSHALL. Part of `all` only on opskit's embedded Valkey; on any other server only
  when named, since it wipes keys that are not ours;
- redis_stop: stop the embedded Valkey for `redis_stop_s` and start it again (skipped, and said
  so, on a Redis opskit did not start);
- terminate: pg_terminate_backend() on writers' backends inside a transaction;
- trigger_outage: disable one phase-1 trigger for a few seconds while a write goes through
  (a simulated bug); reconcile's check must see the drift right after;
- rollback: a share of the writers' transactions roll back on purpose (all along, not scheduled).

The soak's daemons never run the nightly reconcile (their cron is NEVER_CRON): a repair during
the run would hide from the final table the drift the faults caused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
import redis
from psycopg import sql

from opskit.app import auth
from opskit.benchmarking.api_process import ApiProcess, server_env
from opskit.benchmarking.workload import (
    WRITER_APPLICATION_NAME,
    World,
    Writers,
    world_from_database,
)
from opskit.core import schema, servers
from opskit.core.db import connect, redis_client
from opskit.core.errors import BadInput, EnvironmentProblem, OpskitError, first_line
from opskit.core.settings import Settings, mask_url
from opskit.engine import migrations, reconcile, refresh
from opskit.engine.daemon import HEARTBEAT_S, LIVE_AFTER_HEARTBEATS, application_name
from opskit.engine.truth import DENORMALIZED, diff_against_truth
from opskit.sql import queries

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

FAULT_KINDS = (
    "daemon_kill",
    "two_daemons",
    "redis_flush",
    "flushall",
    "redis_stop",
    "terminate",
    "trigger_outage",
    "rollback",
)
NEVER_CRON = "0 0 29 2 *"  # 29 February: no slot within the daemon's catch-up grace of a soak
NEVER_S = str(10 * 365 * 86400)  # the daemon's `reconcile --changed --fix` interval: not in a soak
ROLLBACK_SHARE = 0.05
TERMINATE_AT_ONCE = 3
TRIGGER_OUTAGE_S = 3.0
# The trigger disabled by trigger_outage: (table, trigger, the relation its outage must drift).
OUTAGE_TRIGGER = ("messages", "trg_opskit_messages_ins", "message_conversations_denorm")
SECOND_DAEMON_S = 8.0
DAEMON_BUSY_WAIT_S = 10.0  # under writes a daemon applies a batch at every poll
DRAIN_TIMEOUT_S = 60.0  # a backlog after the faults is applied in bounded batches
WORLD_USERS = 2000
# Users who vote only through the API: no SQL writer changes their votes behind the cache's back,
# so drift of their cached sets before --fix comes from the Redis faults alone.
API_USERS = 50
WORLD_PROJECTS = 500
API_THREADS = 2
API_POOL_SIZE = 4
API_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0  # a loaded 2-core machine takes 15 s to import the CLI
STOP_TIMEOUT_S = 15.0
# A fault that fails is reported as skipped, with the reason; the soak goes on.
FAULT_ERRORS = (OpskitError, psycopg.Error, redis.RedisError, OSError, psutil.Error)


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 300.0
    writers: int = 32
    faults: str = "all"  # all | none | comma-separated FAULT_KINDS (parse_faults)
    seed: int = 1
    scale: str | None = None  # seed and migrate an empty database at this scale first
    api: bool = True  # vote and read through `opskit serve --mode after`
    redis_stop_s: float = 10.0
    out_dir: Path | None = None  # daemon and server logs, soak.json (default under OPSKIT_HOME)


@dataclass
class SoakResult:
    database: str
    redis: str
    out_dir: str
    duration_s: float
    writers: int
    fault_kinds: list[str]
    prepared: str | None = None  # what was done to an empty database first
    writes_committed: int = 0
    writes_rolled_back: int = 0
    writes_rejected: int = 0  # expected refusals: the row was deleted meanwhile
    connections_lost: int = 0  # writers' backends terminated (the operation's outcome unknown)
    api_requests: int = 0
    api_errors: int = 0  # 5xx answers or no answer
    deadlocks: int = 0
    deadlock_details: list[str] = field(default_factory=list)  # the first ones, with operations
    writer_errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)  # kind -> times injected
    faults_skipped: dict[str, str] = field(default_factory=dict)  # kind -> why
    kills_during_refresh: int = 0
    trigger_outages_detected: int = 0
    daemons_started: int = 0
    queue_left: int = 0  # changes no view applied by the end of the drain
    drain_s: float = 0.0
    drift_before_fix: dict[str, int] = field(default_factory=dict)
    drift_fixed: dict[str, int] = field(default_factory=dict)
    drift_after_fix: dict[str, int] = field(default_factory=dict)
    staleness_s: dict[str, float | None] = field(default_factory=dict)  # p50, p95, max
    staleness_by_view_s: dict[str, dict] = field(default_factory=dict)  # view -> p50, p95, max
    refresh_runs: dict[str, int] = field(default_factory=dict)  # status -> runs
    overlapping_refreshes: int = 0

    @property
    def problems(self) -> list[str]:
        """Every figure that must be 0 (or must hold) and does not."""
        found = []
        if sum(self.drift_after_fix.values()):
            found.append(f"drift after --fix: {sum(self.drift_after_fix.values())}")
        if self.overlapping_refreshes:
            found.append(f"{self.overlapping_refreshes} overlapping refreshes of one view")
        if self.deadlocks:
            found.append(f"{self.deadlocks} deadlocks")
        if self.writer_errors:
            found.append(f"{self.writer_errors} writer errors")
        if self.api_errors:
            found.append(f"{self.api_errors} API errors")
        if self.queue_left:
            found.append(f"{self.queue_left} changes left unapplied after the drain")
        relations = {spec.relation for spec in DENORMALIZED}
        unexplained = sum(n for name, n in self.drift_before_fix.items() if name in relations)
        if unexplained and not self.faults.get("trigger_outage"):
            found.append(f"drift {unexplained} before --fix without a simulated trigger bug")
        missed = self.faults.get("trigger_outage", 0) - self.trigger_outages_detected
        if missed:
            found.append(f"{missed} trigger outages not detected by reconcile")
        if "terminate" not in self.faults and self.connections_lost:
            found.append(f"{self.connections_lost} writer connections lost without a fault")
        return found

    def as_dict(self) -> dict:
        return {**asdict(self), "problems": self.problems, "ok": not self.problems}


def parse_faults(text: str, *, embedded_redis: bool) -> tuple[str, ...]:
    """`all`, `none` or a comma-separated list of FAULT_KINDS; BadInput for anything else."""
    text = text.strip().lower()
    if text == "none":
        return ()
    if text == "all":
        return tuple(k for k in FAULT_KINDS if embedded_redis or k != "flushall")
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown or not kinds:
        raise BadInput(
            f"unknown fault kind {', '.join(unknown) or repr(text)}",
            hint=f"use all, none, or a comma-separated list of: {', '.join(FAULT_KINDS)}",
        )
    return tuple(dict.fromkeys(kinds))


def embedded_valkey(settings: Settings, redis_url: str) -> servers.EmbeddedServer | None:
    """opskit's embedded Valkey under OPSKIT_HOME when `redis_url` points at it, else None."""
    server = servers.status(settings.home).valkey
    return server if server is not None and server.url == redis_url else None


def soak(settings: Settings, options: SoakOptions) -> SoakResult:
    """Run the soak and return its table; never raises for what it measures (see problems)."""
    parse_faults(options.faults, embedded_redis=False)  # bad input exits 2 before any connect
    url = servers.resolve_database_url(settings)
    redis_url = servers.resolve_redis_url(settings)
    redis_client(redis_url).close()
    kinds = parse_faults(
        options.faults, embedded_redis=embedded_valkey(settings, redis_url) is not None
    )
    prepared = prepare_database(url, options.scale, options.seed)
    started_at = dt.datetime.now(dt.UTC)
    out_dir = options.out_dir or settings.home / "soak" / started_at.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = SoakResult(
        database=mask_url(url),
        redis=mask_url(redis_url),
        out_dir=str(out_dir),
        duration_s=options.duration_s,
        writers=options.writers,
        fault_kinds=list(kinds),
        prepared=prepared,
    )
    run = _SoakRun(settings, options, kinds, url, redis_url, out_dir, result)
    run.execute()
    (out_dir / "soak.json").write_text(json.dumps(result.as_dict(), indent=2, default=str))
    return result


def prepare_database(url: str, scale: str | None, seed_number: int) -> str | None:
    """Seed and migrate an empty database when `scale` is given; refuse an unmigrated one."""
    with connect(url, autocommit=True) as conn:
        empty = bool(schema.missing_app_tables(conn)) or not schema.has_rows(conn)
    if empty:
        if scale is None:
            raise EnvironmentProblem(
                "the database holds no app data",
                hint="pass --scale S to seed and migrate it first",
            )
        from opskit.benchmarking import seed  # here: numpy, and `opskit --help` imports soak

        seed.seed_database(url, scale, seed_number)
        migrations.migrate(url)
        return f"seeded {scale} (seed {seed_number}) and migrated"
    with connect(url, autocommit=True) as conn:
        ledger = migrations.read_ledger(conn)
    pending = [phase for phase in migrations.PHASES if phase not in ledger]
    if pending:
        raise EnvironmentProblem(
            f"the database is not migrated (pending: {', '.join(pending)})",
            hint="run `opskit migrate` first",
        )
    return None


class _Process:
    """A child process of the soak (a daemon or the API server) and its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        self.worker_id = f"{socket.gethostname()}:{self.popen.pid}"  # refresh.worker_id()
        self.killed_at: dt.datetime | None = None
        self.base_url = ""  # the API server's

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.killed_at = dt.datetime.now(dt.UTC)
        self.popen.kill()
        self.popen.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it outlives STOP_TIMEOUT_S."""
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %s s, killing it", self.name, STOP_TIMEOUT_S)
            self.kill()

    def last_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"


class _SoakRun:
    """One soak: its children, threads and counters (soak() is the entry point)."""

    def __init__(
        self,
        settings: Settings,
        options: SoakOptions,
        kinds: tuple[str, ...],
        url: str,
        redis_url: str,
        out_dir: Path,
        result: SoakResult,
    ) -> None:
        self.settings = settings
        self.options = options
        self.kinds = kinds
        self.url = url
        self.redis_url = redis_url
        self.out_dir = out_dir
        self.result = result
        self.secret = settings.jwt_secret or secrets.token_urlsafe(32)
        self.daemons: list[_Process] = []  # every daemon started, alive or not
        self.primary: _Process | None = None  # the daemon started here that runs all along
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.api_errors: list[str] = []
        self.rng = random.Random(options.seed)
        self.load_ends = 0.0  # time.monotonic() when the writers stop

    # ------------------------------------------------------------------ the run

    def execute(self) -> None:
        with connect(self.url, autocommit=True) as conn:
            since = conn.execute(queries("soak.sql")["now"]).fetchone()[0]
            sampled = world_from_database(conn, WORLD_USERS, WORLD_PROJECTS, self.options.seed)
            existing = self._live_daemons(conn)
        api_share = min(API_USERS, len(sampled.users) // 4) if self.options.api else 0
        world = dataclasses.replace(sampled, users=sampled.users[api_share:])
        api_users = sampled.users[:api_share]
        try:
            if existing:
                log.info("a daemon is alive (%s): the soak starts none", ", ".join(existing))
            else:
                self.primary = self._start_daemon()
                if not self._wait_for_heartbeat(self.primary):
                    raise EnvironmentProblem(
                        f"the daemon did not start: {self.primary.last_line()}",
                        hint=f"see {self.primary.log_path}",
                    )
            self._run_load(world, api_users)
            self._drain()
        finally:
            self.stop.set()
            for daemon in self.daemons:
                daemon.stop()
        self._reconcile_three_times()
        self._refresh_figures(since)

    def _run_load(self, world: World, api_users: tuple[int, ...]) -> None:
        """Writers, API clients and the fault injector for the duration; then count."""
        writers = Writers(
            self.url,
            world,
            self.options.writers,
            None,
            self.options.seed,
            rollback_share=ROLLBACK_SHARE if "rollback" in self.kinds else 0.0,
            reconnect=True,
        )
        api = self._start_api() if self.options.api else None
        self.load_ends = time.monotonic() + self.options.duration_s
        threads = [threading.Thread(target=self._inject_faults, daemon=True)]
        if api is not None:
            threads += [
                threading.Thread(
                    target=self._api_client, args=(api, api_users, world, i), daemon=True
                )
                for i in range(API_THREADS)
            ]
        try:
            with writers:
                for thread in threads:
                    thread.start()
                self.stop.wait(self.options.duration_s)
        finally:
            # Also on Ctrl-C: the injector's own finally re-enables the trigger and restarts
            # Redis, so wait for it (a fault returns as soon as `stop` is set).
            self.stop.set()
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            if api is not None:
                api.stop()
        result = self.result
        result.writes_committed = writers.committed
        result.writes_rolled_back = writers.rolled_back
        result.writes_rejected = writers.rejected
        result.connections_lost = writers.connections_lost
        result.deadlocks = writers.deadlocks
        result.deadlock_details = writers.deadlock_details[:3]
        result.writer_errors = len(writers.errors)
        result.first_errors = (writers.errors + self.api_errors)[:5]
        if "rollback" in self.kinds:
            result.faults["rollback"] = writers.rolled_back

    # ------------------------------------------------------------------ children

    def _child_env(self) -> dict[str, str]:
        settings = self.settings
        env = server_env(settings, self.url, self.redis_url, jwt_secret=self.secret)
        env.update(
            OPSKIT_REFRESH_POLL_S=str(settings.refresh_poll_s),
            OPSKIT_REFRESH_WORKERS=str(settings.refresh_workers),
            OPSKIT_RECONCILE_CRON=NEVER_CRON,
            OPSKIT_RECONCILE_CHANGED_S=NEVER_S,
        )
        return env

    def _start_daemon(self) -> _Process:
        argv = ["-m", "opskit", "scheduler"]  # `python scheduler.py` in a checkout is the same
        number = len(self.daemons)
        daemon = _Process(
            f"daemon {number}",
            [sys.executable, *argv],
            self._child_env(),
            self.out_dir / f"daemon-{number}.log",
        )
        self.daemons.append(daemon)
        self.result.daemons_started += 1
        return daemon

    def _start_api(self) -> ApiProcess:
        server = ApiProcess(
            "after", self._child_env(), pool_size=API_POOL_SIZE, log_path=self.out_dir / "api.log"
        )
        try:
            server.wait_healthy(START_TIMEOUT_S)
        except EnvironmentProblem as err:
            server.stop()
            raise EnvironmentProblem(
                f"the API server did not start: {err.message}", hint=f"see {server.log_path}"
            ) from None
        return server

    def _live_daemons(self, conn: psycopg.Connection) -> list[str]:
        if not conn.execute(queries("soak.sql")["heartbeats_exist"]).fetchone()[0]:
            return []
        return [
            row[0]
            for row in conn.execute(
                queries("soak.sql")["live_daemons"],
                {"live_after_s": HEARTBEAT_S * LIVE_AFTER_HEARTBEATS},
            )
        ]

    # ------------------------------------------------------------------ API clients

    def _api_client(
        self, server: ApiProcess, users: tuple[int, ...], world: World, number: int
    ) -> None:
        """Vote (up, down, none) and read the feed with has_upvoted, as one of `users`."""
        import httpx

        rng = random.Random(self.options.seed * 1000 + number)
        tokens: dict[int, str] = {}
        with httpx.Client(base_url=server.url, timeout=API_TIMEOUT_S) as client:
            while not self.stop.is_set():
                user = rng.choice(users)
                token = tokens.get(user) or tokens.setdefault(
                    user, auth.mint_token(self.secret, user, 24 * 3600)
                )
                body = {
                    "project_id": rng.choice(world.projects[:50]),
                    "vote_type": rng.choice(["up", "up", "down", "none"]),
                }
                self._api_call(client, "POST", "/api/votes", token, body)
                self._api_call(client, "GET", "/api/projects?sort=top&per_page=50", token, None)

    def _api_call(
        self, client: httpx.Client, method: str, path: str, token: str, body: dict | None
    ) -> None:
        import httpx

        problem = None
        try:
            reply = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            # 4xx: a user or project the writers deleted meanwhile; 5xx is a failure
            if reply.status_code >= 500:
                problem = f"API {method} {path}: {reply.status_code} {reply.content[:200]!r}"
        except httpx.HTTPError as err:
            problem = f"API {method} {path}: {err}"
        with self.lock:
            self.result.api_requests += 1
            if problem:
                self.result.api_errors += 1
                self.api_errors.append(problem)

    # ------------------------------------------------------------------ faults

    def _inject_faults(self) -> None:
        """Inject each scheduled kind in turn, evenly over the first 80% of the run."""
        kinds = [kind for kind in self.kinds if kind != "rollback"]
        if not kinds:
            return
        start = time.monotonic()
        window = max(0.0, self.load_ends - start)
        rounds = max(1, int(window // (len(kinds) * 25)))
        schedule = kinds * rounds
        warmup = min(5.0, window * 0.1)
        gap = (window * 0.8 - warmup) / len(schedule)
        for number, kind in enumerate(schedule):
            if self.stop.wait(max(0.0, start + warmup + number * gap - time.monotonic())):
                return
            try:
                injected = getattr(self, f"_fault_{kind}")()
            except FAULT_ERRORS as err:
                with self.lock:
                    self.result.faults_skipped[kind] = f"failed: {first_line(err)}"
                log.warning("fault %s failed: %s", kind, first_line(err))
                continue
            if injected:
                with self.lock:
                    self.result.faults[kind] = self.result.faults.get(kind, 0) + 1
                log.info("fault injected: %s", kind)

    def _skip(self, kind: str, reason: str) -> bool:
        with self.lock:
            self.result.faults_skipped[kind] = reason
        return False

    def _fault_daemon_kill(self) -> bool:
        """SIGKILL the primary daemon once it applies a batch, and start a new one."""
        victim = self.primary
        if victim is None or not victim.alive():
            return self._skip("daemon_kill", "a daemon the soak did not start is running")
        self._wait_for_heartbeat(victim)
        # With writes going on, some view has changes to apply at every poll.
        wait_s = DAEMON_BUSY_WAIT_S + 2 * self.settings.refresh_poll_s
        deadline = time.monotonic() + wait_s
        during_refresh = False
        with connect(self.url, autocommit=True) as conn:
            while time.monotonic() < deadline and not self.stop.is_set():
                holds = conn.execute(
                    queries("soak.sql")["holds_claim"],
                    {
                        "space": refresh.LOCK_SPACE_VIEW,
                        "application_name": application_name(victim.worker_id),
                    },
                ).fetchone()[0]
                if holds:
                    during_refresh = True
                    break
                time.sleep(0.01)
        victim.kill()
        self.primary = self._start_daemon()
        if during_refresh:
            with self.lock:
                self.result.kills_during_refresh += 1
        return True

    def _fault_two_daemons(self) -> bool:
        second = self._start_daemon()
        try:
            # It must really run beside the first one, even if the load ends meanwhile.
            if not self._wait_for_heartbeat(second, even_after_stop=True):
                return self._skip("two_daemons", "the second daemon did not start in time")
            self.stop.wait(min(SECOND_DAEMON_S, self.options.duration_s / 4))
        finally:
            second.stop()
        return True

    def _wait_for_heartbeat(self, daemon: _Process, *, even_after_stop: bool = False) -> bool:
        """Wait until `daemon` has written a heartbeat (it runs its jobs); False if it did not."""
        deadline = time.monotonic() + START_TIMEOUT_S
        soak_sql = queries("soak.sql")
        with connect(self.url, autocommit=True) as conn:
            while (
                daemon.alive()
                and (even_after_stop or not self.stop.is_set())
                and time.monotonic() < deadline
            ):
                if (
                    conn.execute(soak_sql["heartbeats_exist"]).fetchone()[0]
                    and conn.execute(
                        soak_sql["has_beaten"], {"worker": daemon.worker_id}
                    ).fetchone()[0]
                ):
                    return True
                time.sleep(0.05)
        return False

    def _fault_redis_flush(self) -> bool:
        client = redis_client(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.settings.redis_prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()
        return True

    def _fault_flushall(self) -> bool:
        client = redis_client(self.redis_url)
        try:
            client.flushall()
        finally:
            client.close()
        return True

    def _fault_redis_stop(self) -> bool:
        server = embedded_valkey(self.settings, self.redis_url)
        if server is None:
            return self._skip("redis_stop", "Redis is not opskit's embedded Valkey: not stopped")
        os.kill(server.pid, signal.SIGTERM)
        psutil.Process(server.pid).wait(STOP_TIMEOUT_S)
        try:
            self.stop.wait(self.options.redis_stop_s)
        finally:
            servers.up(self.settings.home, start_postgres=False, redis_port=server.port)
        return True

    def _fault_terminate(self) -> bool:
        """Terminate up to TERMINATE_AT_ONCE writer backends caught inside a transaction."""
        soak_sql = queries("soak.sql")
        with connect(self.url, autocommit=True) as conn:
            for _ in range(200):
                pids = [
                    row[0]
                    for row in conn.execute(
                        soak_sql["writers_in_transaction"],
                        {"application_name": WRITER_APPLICATION_NAME},
                    )
                ]
                if pids:
                    chosen = self.rng.sample(pids, min(TERMINATE_AT_ONCE, len(pids)))
                    conn.execute(soak_sql["terminate"], {"pids": chosen})
                    return True
                time.sleep(0.005)
        return self._skip("terminate", "no writer was inside a transaction")

    def _fault_trigger_outage(self) -> bool:
        """Disable a phase-1 trigger while a write goes through; reconcile must see the drift."""
        table, trigger, relation = OUTAGE_TRIGGER
        soak_sql = queries("soak.sql")
        toggle = "ALTER TABLE {} {} TRIGGER {}"
        with connect(self.url, autocommit=True) as conn:
            conn.execute(soak_sql["lock_timeout"])
            conn.execute(
                sql.SQL(toggle).format(
                    sql.Identifier(table), sql.SQL("DISABLE"), sql.Identifier(trigger)
                )
            )
            try:
                conn.execute(soak_sql["outage_probe_message"])
                self.stop.wait(TRIGGER_OUTAGE_S)
            finally:
                self._enable_trigger(conn, toggle, table, trigger)
            # reconcile's check of that relation (a full outer join with its truth)
            (spec,) = [spec for spec in DENORMALIZED if spec.relation == relation]
            drift = diff_against_truth(conn, spec).differing
        if drift:
            with self.lock:
                self.result.trigger_outages_detected += 1
        return True

    def _enable_trigger(
        self, conn: psycopg.Connection, toggle: str, table: str, trigger: str
    ) -> None:
        """Enable the trigger again, however long the writers' locks make it wait."""
        statement = sql.SQL(toggle).format(
            sql.Identifier(table), sql.SQL("ENABLE"), sql.Identifier(trigger)
        )
        while True:
            try:
                conn.execute(statement)
                return
            except psycopg.errors.LockNotAvailable:
                log.warning("enabling %s waits for locks on %s", trigger, table)

    # ------------------------------------------------------------------ the end

    def _drain(self) -> None:
        """Wait until every change is applied (a live daemon applies them)."""
        settings = self.settings
        primary_alive = self.primary is not None and self.primary.alive()
        if not primary_alive and not self._live_daemons_now():
            self.primary = self._start_daemon()
        timeout = DRAIN_TIMEOUT_S + 5 * settings.refresh_poll_s
        started = time.monotonic()
        with connect(self.url, autocommit=True) as conn:
            while True:
                left = conn.execute(queries("soak.sql")["queue_left"]).fetchone()[0]
                if not left or time.monotonic() - started > timeout:
                    break
                time.sleep(0.1)
        self.result.queue_left = left
        self.result.drain_s = round(time.monotonic() - started, 2)

    def _live_daemons_now(self) -> list[str]:
        with connect(self.url, autocommit=True) as conn:
            return self._live_daemons(conn)

    def _reconcile_three_times(self) -> None:
        """reconcile, reconcile --fix, reconcile: drift before, repaired, and left."""
        settings, url, redis_url = self.settings, self.url, self.redis_url
        before = reconcile.reconcile(settings, url, redis_url, fix=False)
        fixed = reconcile.reconcile(settings, url, redis_url, fix=True)
        after = reconcile.reconcile(settings, url, redis_url, fix=False)
        self.result.drift_before_fix = {check.name: check.drift for check in before.checks}
        self.result.drift_fixed = {check.name: check.fixed for check in fixed.checks}
        self.result.drift_after_fix = {check.name: check.drift for check in after.checks}

    def _refresh_figures(self, since: dt.datetime) -> None:
        soak_sql = queries("soak.sql")
        with connect(self.url, autocommit=True) as conn:
            staleness = conn.execute(soak_sql["staleness"], {"since": since}).fetchall()
            runs = conn.execute(soak_sql["refresh_runs"], {"since": since}).fetchall()
        self.result.staleness_s = staleness_quantiles([value for _view, value in staleness])
        by_view: dict[str, list[float]] = {}
        for view, value in staleness:
            by_view.setdefault(view, []).append(value)
        self.result.staleness_by_view_s = {
            view: staleness_quantiles(values) for view, values in sorted(by_view.items())
        }
        statuses: dict[str, int] = {}
        for _id, _view, status, *_rest in runs:
            statuses[status] = statuses.get(status, 0) + 1
        self.result.refresh_runs = statuses
        killed_at = {d.worker_id: d.killed_at for d in self.daemons if d.killed_at}
        self.result.overlapping_refreshes = overlapping_runs(runs, killed_at)


def staleness_quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and max of batch staleness in seconds (None without batches)."""
    if not values:
        return {"p50": None, "p95": None, "max": None}
    import numpy as np  # only here: `opskit --help` imports this module

    array = np.array(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 3),
        "p95": round(float(np.percentile(array, 95)), 3),
        "max": round(float(array.max()), 3),
    }


def overlapping_runs(runs: list[tuple], killed_at: dict[str, dt.datetime]) -> int:
    """Pairs of refresh runs of one view whose intervals overlap.

    A run of a daemon the soak killed ends when it was killed: its log row is only closed
    (marked failed) when a later refresher finds the orphaned claims, long after. A run that
    never finished counts up to now.
    """
    now = dt.datetime.now(dt.UTC)
    intervals: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {}
    for _id, view, _status, worker, started, finished in runs:
        end = finished or now
        if worker in killed_at:
            end = min(end, killed_at[worker])
        intervals.setdefault(view, []).append((started, end))
    overlaps = 0
    for spans in intervals.values():
        spans.sort()
        for i, (_start, end) in enumerate(spans):
            overlaps += sum(1 for other_start, _ in spans[i + 1 :] if other_start < end)
    return overlaps
