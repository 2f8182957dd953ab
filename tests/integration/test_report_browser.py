"""The HTML report in headless Chromium: it renders, logs no error and requests nothing.

Debian's `chromium` is driven through the DevTools protocol over `--remote-debugging-pipe`
(no port, no extra Python package). `make test` installs it first (`make browser-deps`); when
chromium is missing the test FAILS saying so, it never skips: a report nobody checked in a
browser is not a finished report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from opskit.benchmarking import report
from tests.unit.result_folders import ENDPOINTS, write_result_folder

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is missing: run `make browser-deps` (which `make test` runs first), "
            "or install Debian's chromium",
            pytrace=False,
        )
    return path


class DevTools:
    """A Chromium browser spoken to over the DevTools pipe (fd 3 in, fd 4 out, NUL-framed)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()
        # above 9, so the shell's `3<&N 4>&M` cannot overwrite one with the other
        child_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
        for fd in (to_browser_read, from_browser_write):
            os.close(fd)
        command = " ".join(
            [
                "exec",
                executable,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
                f"3<&{child_in}",
                f"4>&{child_out}",
            ]
        )
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            pass_fds=(child_in, child_out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(child_in)
        os.close(child_out)
        self._write, self._read = to_browser_write, from_browser_read
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _receive(self) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], deadline - time.monotonic())
            chunk = os.read(self._read, 65536) if ready else b""
            if not chunk:
                raise AssertionError(f"chromium stopped answering: {self._stderr()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr(self) -> str:
        self.process.kill()
        return self.process.communicate(timeout=10)[1].decode(errors="replace")[-1000:]

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):  # it may close before answering
            self.send("Browser.close")
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


def test_report_renders_in_chromium_without_errors_or_network(chromium, tmp_path):
    before = write_result_folder(tmp_path / "before", seed=1, flags={3: ["rate_below_target"]})
    after = write_result_folder(tmp_path / "after", mode="after", seed=2, speed=2.0)
    page = report.render(before, after, tmp_path / "report.html").resolve()
    url = page.as_uri()

    browser = DevTools(chromium, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")

        def evaluate(expression: str):
            result = browser.send(
                "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
            )
            return result["result"]["value"]

        headline_rows = evaluate("document.querySelectorAll('#headline-table tbody tr').length")
        endpoints = evaluate(
            "[...document.querySelectorAll('#headline-table tbody td.name')]"
            ".map(td => td.textContent)"
        )
        charts_drawn = evaluate(
            "[...document.querySelectorAll('svg.chart')]"
            ".filter(svg => svg.getBoundingClientRect().width > 100).length"
        )
        flag_marks = evaluate("document.querySelectorAll('tr.flagged').length")
    finally:
        browser.close()

    assert headline_rows == len(ENDPOINTS)
    assert sorted(endpoints) == sorted(ENDPOINTS)
    assert charts_drawn == len(ENDPOINTS) + 6
    assert flag_marks == 1

    requested = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested == [url]  # the page itself and nothing else
    errors = [
        e["params"]
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
