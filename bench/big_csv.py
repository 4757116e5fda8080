"""`magic141 bulk` on a huge CSV: 50,000 rows that are all rejected, and a whole-file refusal.

    python bench/big_csv.py [--rows 50000]

Both run as a user runs them, each a new process against a Prefect server this script starts (so
the server's start is not counted). Reported: wall time and peak memory (max RSS of the command).
Targets on the 2-core machine: 50,000 rows rejected in at most 30 s and 500 MB; a refusal in at most
3 s. Writes the ``big_csv`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

logger = logging.getLogger("bench.big_csv")

MAGIC141 = str(Path(sys.executable).with_name("magic141"))
PROMPT = "a lighthouse on a cliff above a stormy sea at dusk, waves breaking on the rocks below, " * 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of ``command`` as a new process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def _server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the Prefect server did not start within 300 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="magic141-big-csv-") as folder:
        work = Path(folder)
        big = work / "big.csv"
        with big.open("w") as sink:
            sink.write("id,prompt,seconds,fps\n")
            for number in range(args.rows):
                sink.write(f"r{number},{PROMPT}{number},601,6\n")  # every row asks for more than 600 s
        refused = work / "refused.csv"
        refused.write_text("prompt,prompt\na,b\n")
        env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
        env.update(HOME=str(work), PYTHONDONTWRITEBYTECODE="1")
        server, url = _server(work / "prefect", env)
        try:
            env["PREFECT_API_URL"] = url
            refusal = _measured([MAGIC141, "bulk", str(refused), "--out-dir", str(work / "refused-out")], env, work)
            rejected = _measured([MAGIC141, "bulk", str(big), "--out-dir", str(work / "big-out")], env, work)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()
        size_mb = big.stat().st_size / 1e6
    rows = []
    failed = False
    for name, (seconds, peak_mb, status), limit_s, limit_mb in (
        (f"{args.rows:,} rows, all rejected ({size_mb:.0f} MB CSV)", rejected, 30.0, 500.0),
        ("whole-file refusal (a duplicate column)", refusal, 3.0, None),
    ):
        met = seconds <= limit_s and (limit_mb is None or peak_mb <= limit_mb)
        failed |= not met
        target = f"<= {limit_s:.0f} s" + ("" if limit_mb is None else f", <= {limit_mb:.0f} MB")
        logger.info("%s: %.1f s, %.0f MB, exit %d", name, seconds, peak_mb, status)
        rows.append(f"| {name} | {seconds:.1f} | {peak_mb:.0f} | {status} | {target} | {'met' if met else 'MISSED'} |")
    body = "\n".join([
        "## A huge prompt CSV: rejecting every row, and refusing a file",
        "",
        "`python bench/big_csv.py`: `magic141 bulk` as a new process against a running Prefect server; peak memory is",
        "the command's max RSS.",
        "",
        "| case | wall s | peak MB | exit | target | |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    write_section("big_csv", body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
