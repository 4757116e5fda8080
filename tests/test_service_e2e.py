"""The scheduled service as the README runs it: a Prefect server with its scheduler, process workers, a schedule.

Nothing is called in process: ``python -m deployments`` applies the service, ``prefect worker start`` runs
the scheduled and triggered runs from a folder that is not the checkout, and Prefect's own CLI reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import PG_CONNINFO
from prefect_server import PrefectServer, stop_groups

from retrieval_index.demo import make_demo_corpus
from retrieval_index.store import current_version
from tasks.catalog import open_catalog

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def service_server(tmp_path_factory: pytest.TempPathFactory, postgres_problem: str | None) -> Iterator[PrefectServer]:
    """A server of its own with all its services; the scheduler looks for due runs every 5 s instead of 60 s.

    Its database is PostgreSQL, as the README recommends for a service (on SQLite, a busy machine's workers
    and scheduler meet 'database is locked'); SQLite where no PostgreSQL answers.
    """
    settings = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    database = f"prefect_e2e_{uuid.uuid4().hex[:12]}"
    if postgres_problem is None:
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        settings["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    server = PrefectServer(tmp_path_factory.mktemp("service-prefect"), services=True, settings=settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if postgres_problem is None:
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _api(server: PrefectServer, path: str, body: dict | None = None) -> list[dict]:
    response = httpx.post(f"{server.api_url}/{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def _runs_of(server: PrefectServer, deployment: str) -> list[dict]:
    [found] = [d for d in _api(server, "deployments/filter") if d["name"] == deployment]
    return _api(server, "flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [found["id"]]}}})


def _wait(what: str, check, timeout_s: float, *logs: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    tails = "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                      for log in logs if log.exists())
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s\n{tails}", pytrace=False)


def _client_env(server: PrefectServer, home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env.update(HOME=str(home), PREFECT_API_URL=server.api_url, PREFECT_HOME=str(home / ".prefect"),
               PYTHONDONTWRITEBYTECODE="1", PREFECT_WORKER_QUERY_SECONDS="2")
    return env


def test_a_schedule_makes_runs_workers_run_them_and_failures_are_visible(
    service_server: PrefectServer, tmp_path: Path, postgres_problem: str | None, request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _client_env(service_server, home)
    make_demo_corpus(tmp_path / "corpus")
    if postgres_problem is None:  # trust authentication takes any password: the one the service must not leak
        catalog = request.getfixturevalue("pg_url").replace("://postgres@", "://postgres:s3cret-pw@")
    else:
        catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    inbox, index_dir = tmp_path / "inbox", tmp_path / "index"

    applied = subprocess.run(
        [sys.executable, "-m", "deployments", "--inbox", str(inbox), "--out-dir", str(tmp_path / "videos"),
         "--catalog", catalog, "--corpus", str(tmp_path / "corpus"), "--index-dir", str(index_dir),
         "--inbox-cron", "* * * * *"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
    )
    assert applied.returncode == 0, applied.stderr
    assert "building it once now" in applied.stdout and current_version(index_dir) is not None
    assert (inbox / "done").is_dir() and (inbox / "failed").is_dir()

    (inbox / "prompts.csv").write_text("id,prompt,seconds,fps\nboat,a paper boat,1,6\n")
    settled = time.time() - 60
    os.utime(inbox / "prompts.csv", (settled, settled))

    elsewhere = tmp_path / "worker-folder"  # not the checkout: the deployments' pull step must find flows/
    elsewhere.mkdir()
    workers = []
    for pool in ("magic141-gpu", "magic141-process"):
        log = tmp_path / f"worker-{pool}.log"
        with log.open("wb") as sink:
            workers.append(subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool], cwd=elsewhere,
                                            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True))
    logs = [service_server.log_path, tmp_path / "worker-magic141-gpu.log", tmp_path / "worker-magic141-process.log"]
    try:
        _wait("the scheduled inbox run filing prompts.csv in done/", (inbox / "done" / "prompts.csv").exists, 360,
              *logs)
        with open_catalog(catalog) as store:
            assert len(store.list_videos()) == 1

        triggered = subprocess.run([str(BIN / "prefect"), "deployment", "run", "rebuild-index/rebuild-index"],
                                   env=env, cwd=elsewhere, capture_output=True, text=True, timeout=120)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        rebuilt = _wait("the triggered index rebuild finishing",
                        lambda: [r for r in _runs_of(service_server, "rebuild-index") if r["state_type"] in FINAL],
                        240, *logs)
        assert [run["state_type"] for run in rebuilt] == ["COMPLETED"], rebuilt[0]["state"]

        listed = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "bulk-inbox/bulk-generate" in listed.stdout and "rebuild-index/rebuild-index" in listed.stdout
    finally:
        stop_groups(workers, 30)

    inbox_runs = [run for run in _runs_of(service_server, "bulk-generate") if run["state_type"] == "COMPLETED"]
    assert inbox_runs and all(run["name"] == "inbox inbox" for run in inbox_runs)
    batches = _api(service_server, "flow_runs/filter",
                   {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"] for run in inbox_runs]}}})
    assert [(run["name"].rsplit(" ", 1)[0], run["state_type"]) for run in batches] == [("bulk prompts.csv",
                                                                                         "COMPLETED")]
    if postgres_problem is None:
        every_run = _api(service_server, "flow_runs/filter")
        assert "s3cret-pw" not in json.dumps([run["parameters"] for run in every_run])
        assert "s3cret-pw" not in json.dumps([d["parameters"] for d in _api(service_server, "deployments/filter")])

    server_log = service_server.log_path.read_text(errors="replace")
    if postgres_problem is None:
        assert "Traceback" not in server_log and "| ERROR" not in server_log, service_server.log_tail(60)
    else:  # SQLite's lock errors under load are not the scheduler's: its own loop must run clean
        assert "prefect.server.services.scheduler" not in server_log, service_server.log_tail(60)
