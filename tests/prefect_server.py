"""A real Prefect server process of the test suite's own: its home, database, port and log file are private.

The suite starts one with ``prefect server start`` (as a user does), checks before every test that
uses it that it still answers, and starts it again on the same port and database if it died, so one
lost server never turns into a cascade of connection errors. When it cannot be started, the test
fails with the tail of the server's log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT_S = 240.0


def stop_groups(processes: list[subprocess.Popen], timeout_s: float = 15.0) -> None:
    """Stop each process with everything it started (its process group): SIGTERM, then SIGKILL after ``timeout_s``."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrefectServer:
    """One ``prefect server start`` process on 127.0.0.1, with its data in ``home``."""

    def __init__(
        self, home: Path, *, services: bool = False, port: int | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.services = services
        self.settings = dict(settings or {})  # more PREFECT_* settings of the server process
        self.port = port or free_port()
        self.log_path = home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def environment(self) -> dict[str, str]:
        """The environment of the server process, and of clients meant to share its Prefect home."""
        env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        )
        env.update(self.settings)
        return env

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                   "--port", str(self.port), "--no-ui", "--analytics-off"]
        if not self.services:
            command.append("--no-services")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(command)}\n".encode())
            self.process = subprocess.Popen(command, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with status {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the Prefect server did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.healthy()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.process is None:
            return
        stop_groups([self.process])  # the server and the uvicorn process it may start
        self.process = None
