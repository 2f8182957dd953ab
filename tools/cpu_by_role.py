"""Where the CPU goes during a capacity ramp: per-role CPU, sampled every second.

    python tools/cpu_by_role.py --database-url URL --api-pid PID --daemon-pid PID \
        --generator-pid PID -o cpu.jsonl [--seconds N]

Each line: {"t": unix time, "interval_s": s, "cpu": {role: % of one core}} for the roles
`api` (the `opskit serve` process and its workers), `daemon` (`opskit scheduler` and its
children), `generator` (`opskit capacity` and its Locust processes), `pg_api` (the server's
backends connected to the database of --database-url: the API's), `pg_daemon` (those of
the daemon, application_name `opskit-daemon ...`), `pg_other` (every other postgres
process: other databases, WAL writer, checkpointer, ...), `redis` (redis-server) and `other`
(the rest of the machine), plus `machine` (all of it; 100 per core). `summarize` prints the
mean of each role over each step of an `opskit capacity --json` answer:

    python tools/cpu_by_role.py summarize cpu.jsonl capacity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil
import psycopg

ROLES = (
    "api", "daemon", "generator", "pg_api", "pg_daemon", "pg_other", "redis",
    "other",
)  # fmt: skip


def _tree(pid: int | None) -> set[int]:
    if not pid:
        return set()
    try:
        root = psutil.Process(pid)
        return {root.pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    seen = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is not None:
            seen[process.pid] = (process.info["name"] or "", times.user + times.system)
    return seen


def sample(args: argparse.Namespace) -> None:
    conn = psycopg.connect(args.database_url, autocommit=True)
    database = conn.info.dbname
    previous, previous_t = _cpu_seconds(), time.monotonic()
    machine_previous = psutil.cpu_times()
    deadline = time.monotonic() + args.seconds if args.seconds else None
    with open(args.output, "a") as out:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(args.interval)
            backends = dict(
                conn.execute(
                    "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s",
                    (database,),
                ).fetchall()
            )
            trees = {
                "api": _tree(args.api_pid),
                "daemon": _tree(args.daemon_pid),
                "generator": _tree(args.generator_pid),
            }
            now, now_t = _cpu_seconds(), time.monotonic()
            machine = psutil.cpu_times()
            elapsed = now_t - previous_t
            cpu = dict.fromkeys(ROLES, 0.0)
            for pid, (name, seconds) in now.items():
                used = seconds - previous.get(pid, (name, seconds))[1]
                role = next((r for r, pids in trees.items() if pid in pids), None)
                if role is None:
                    if name.startswith("postgres"):
                        role = "pg_other"
                        if pid in backends:
                            daemon = backends[pid].startswith("opskit-daemon")
                            role = "pg_daemon" if daemon else "pg_api"
                    elif name.startswith("redis-server"):
                        role = "redis"
                    else:
                        role = "other"
                cpu[role] += used
            busy = sum(machine) - machine.idle - machine.iowait
            busy -= sum(machine_previous) - machine_previous.idle - machine_previous.iowait
            line = {
                "t": time.time(),
                "interval_s": round(elapsed, 3),
                "cpu": {role: round(100 * s / elapsed, 1) for role, s in cpu.items()},
                "machine": round(100 * busy / elapsed, 1),
            }
            out.write(json.dumps(line) + "\n")
            out.flush()
            previous, previous_t, machine_previous = now, now_t, machine


def summarize(samples_path: str, capacity_path: str) -> None:
    samples = [json.loads(line) for line in Path(samples_path).read_text().splitlines()]
    result = json.loads(Path(capacity_path).read_text())
    print("users  rps    p99_ms  " + "  ".join(f"{r:>9}" for r in (*ROLES, "machine")))
    for step in result["steps"]:
        inside = [s for s in samples if step["measured_from"] <= s["t"] <= step["measured_until"]]
        if not inside:
            continue
        means = {r: sum(s["cpu"][r] for s in inside) / len(inside) for r in ROLES}
        means["machine"] = sum(s["machine"] for s in inside) / len(inside)
        print(
            f"{step['users']:5d}  {step['rps']:6.1f} {step['p99_ms'] or 0:7.1f}  "
            + "  ".join(f"{means[r]:9.1f}" for r in (*ROLES, "machine"))
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        summarize(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--api-pid", type=int)
    parser.add_argument("--daemon-pid", type=int)
    parser.add_argument("--generator-pid", type=int)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("-o", "--output", required=True)
    sample(parser.parse_args())


if __name__ == "__main__":
    main()
