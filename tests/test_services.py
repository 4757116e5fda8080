"""Services the CLI starts for itself: a private local Ray, Prefect's temporary server, and quiet output.

These run the real parts: a ``ray start`` cluster on the host, CPU burners, fresh Prefect homes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from prefect_server import free_port, stop_groups

from magic141.components import build_i2v_components
from magic141.presets import get_preset
from magic141.weights import save_i2v_components
from retrieval_index.demo import make_demo_corpus
from tasks.runtime import services

REPO = Path(__file__).resolve().parents[1]
MAGIC141 = str(Path(sys.executable).with_name("magic141"))
RAY = str(Path(sys.executable).with_name("ray"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh home (so a fresh Prefect home) and no Prefect API: the CLI starts its own temporary server."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {name: value for name, value in os.environ.items()
           if name not in ("PREFECT_API_URL", "PREFECT_HOME", "MAGIC141_INDEX_DIR")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def host_ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An unrelated Ray cluster started with ``ray start`` the way a user would, in Ray's default temp folder.

    Stopped by its process group at the end (``ray stop`` would stop every Ray on the host).
    """
    port = free_port()
    home = tmp_path_factory.mktemp("ray-host-home")
    log = home / "ray-start.log"
    # As a user's shell has it: without the RAY_* variables that this process's own ray.init() exported.
    plain = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    plain["HOME"] = str(home)
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", "--block"],
            env=plain, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not Path("/tmp/ray/ray_current_cluster").exists() and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with status {process.returncode}:\n{log.read_text()}", pytrace=False)
        time.sleep(0.5)
    time.sleep(3)  # the head's GCS answers a moment after the address file appears
    try:
        yield address
    finally:
        stop_groups([process], 5)  # 'ray start --block' is slow to end on SIGTERM; its group is killed


def test_a_local_ray_is_private_even_beside_a_host_cluster(host_ray_cluster: str) -> None:
    """Without an address the pipeline starts its own Ray (own GCS, temp folder, token, no dashboard)."""
    assert not ray.is_initialized()
    services.start_local_ray(num_cpus=1, num_gpus=2)
    try:
        context = ray.get_runtime_context()
        assert context.gcs_address != host_ray_cluster
        assert ray.cluster_resources().get("GPU") == 2.0  # the host cluster declares none
        assert len(ray.nodes()) == 1
        temp_dir = Path(ray._private.worker.global_worker.node.get_temp_dir_path())
        assert temp_dir.name.startswith("magic141-ray-")
        assert ray._private.worker.global_worker.node.address_info.get("webui_url") in (None, "")
    finally:
        ray.shutdown()


def test_generate_on_two_local_workers_ignores_a_host_cluster(host_ray_cluster: str, prefect_api, tmp_path: Path):
    """The user's case: 'magic141 generate --workers 2' on a machine that runs a Ray cluster."""
    env = {**_env(tmp_path), "PREFECT_API_URL": prefect_api.api_url}
    done = _run([MAGIC141, "generate", "--prompt", "a red circle", "--seconds", "1", "--workers", "2", "--seed", "3",
                 "--out", str(tmp_path / "clip.mp4"), "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "--json"],
                env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"] == 24
    assert done.stderr.strip().splitlines()[-1].startswith("render"), done.stderr  # only the progress bar


def test_local_ray_start_is_retried_then_reported_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray gives a new raylet a fixed 30 s; a start that misses it is tried again, then named with what to do."""
    real_init = ray.init
    calls: list[str] = []

    def flaky_init(*args, **kwargs):
        calls.append(kwargs["_temp_dir"])
        if len(calls) == 1:
            raise Exception("The current node timed out during startup.")  # what Ray raises
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr(services.time, "sleep", lambda seconds: None)
    services.start_local_ray(num_cpus=1, num_gpus=1)
    try:
        assert len(calls) == 2 and not Path(calls[0]).exists()  # the failed try left nothing behind
        assert ray.is_initialized()
    finally:
        ray.shutdown()

    def failing_init(*args, **kwargs):
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(services.ServiceStartError, match=r"did not start in 3 tries .* --ray-address$"):
        services.start_local_ray(num_cpus=1, num_gpus=1)


def test_a_temporary_server_that_does_not_start_is_one_line_and_fails_no_row(prefect_api, tmp_path: Path) -> None:
    """Prefect's temporary server missing its start-up time stops bulk before any row; a rerun does the work."""
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps\nboat,a paper boat,1,8\n")
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    args = [MAGIC141, "bulk", str(csv), "--out-dir", str(tmp_path / "out"), "--catalog", catalog, "--retries", "0"]
    refused = _run(args, _env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1"), tmp_path)
    assert refused.returncode == 75, refused.stderr
    assert refused.stderr.strip() == (
        "magic141: error: Prefect's temporary API server did not answer within 1 s; start a server with 'prefect "
        "server start' and set PREFECT_API_URL to its API address (e.g. http://127.0.0.1:4200/api), or raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    )
    assert not (tmp_path / "catalog.db").exists(), "no row, not even the catalog, is made before the server answers"
    rerun = _run([*args, "--json"], {**_env(tmp_path), "PREFECT_API_URL": prefect_api.api_url}, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["counts"]["done"] == 1


def _burn(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"])


def test_first_runs_succeed_on_a_busy_machine(prefect_api, tmp_path: Path) -> None:
    """While a CPU burner keeps a core busy (with the two commands, a load of about 3 on two cores): the demo's
    first Prefect command on a fresh Prefect home (its temporary server creates and migrates a new database)
    and a render on two local Ray workers."""
    make_demo_corpus(tmp_path / "corpus")
    burners = [_burn(600)]
    try:
        index = subprocess.Popen(
            [MAGIC141, "index", "build", str(tmp_path / "corpus"), "--index-dir", str(tmp_path / "index"), "--json"],
            env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        render = _run([MAGIC141, "generate", "--prompt", "a blue square", "--seconds", "1", "--fps", "8",
                       "--workers", "2", "--out", str(tmp_path / "clip.mp4"),
                       "--catalog", f"sqlite:///{tmp_path / 'c.db'}"],
                      {**_env(tmp_path), "PREFECT_API_URL": prefect_api.api_url}, tmp_path, timeout=540)
        built_out, built_err = index.communicate(timeout=540)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert index.returncode == 0, built_err
    assert json.loads(built_out)["images"] > 0
    assert render.returncode == 0, render.stderr


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_i2v_components(build_i2v_components(get_preset("tiny")), tmp_path_factory.mktemp("w") / "weights")


def test_model_commands_print_only_their_own_lines(weights_folder: Path, tmp_path: Path) -> None:
    """Library warnings (torch's CUDA_HOME, transformers' deprecations) and weight-loading bars go to the log."""
    log = tmp_path / "cli.log"
    env = {**_env(tmp_path), "MAGIC141_LOG_FILE": str(log)}
    quantized = _run([MAGIC141, "model", "quantize", "--weights", str(weights_folder), "--out", str(tmp_path / "q")],
                     env, tmp_path)
    assert quantized.returncode == 0, quantized.stderr
    assert quantized.stderr == ""
    assert quantized.stdout.strip() == f"int8 weights written to {tmp_path / 'q'}"
    reported = _run([MAGIC141, "model", "report", "--weights", str(tmp_path / "q"), "--json"], env, tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert reported.stderr == ""
    assert {entry["component"] for entry in json.loads(reported.stdout)["components"]} >= {"transformer", "vae"}
    deploy = _run([sys.executable, "-m", "deployments", "--inbox", "i", "--out-dir", "o", "--catalog", "sqlite:///c.db",
                   "--corpus", "c", "--index-dir", "x"], env, REPO)
    assert deploy.returncode == 2
    [line] = deploy.stderr.strip().splitlines()
    assert line.startswith("python -m deployments: error: PREFECT_API_URL is not set"), line


def _ray_status(env: dict[str, str], address: str) -> str:
    done = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True, timeout=60)
    return done.stdout if done.returncode == 0 else ""


def test_the_readme_cluster_recipe_a_head_and_a_worker_node_render_a_video(prefect_api, tmp_path: Path) -> None:
    """As the README starts a cluster: an auth token, a head and a worker node with GPUs declared, then
    'magic141 generate --ray-address'. Both nodes are stopped by process group ('ray stop' stops every Ray)."""
    home = tmp_path / "ray-home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token")
    token = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=60)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = []
    try:
        for command in (["--head", f"--port={port}", "--include-dashboard=false"], [f"--address={address}"]):
            log = tmp_path / f"ray-node-{len(nodes)}.log"
            with log.open("wb") as sink:
                nodes.append(subprocess.Popen(
                    [RAY, "start", *command, "--num-cpus=1", "--num-gpus=1", "--disable-usage-stats", "--block"],
                    env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                ))
            deadline = time.monotonic() + 180
            while _ray_status(env, address).count(" node_") < len(nodes):
                if time.monotonic() > deadline or nodes[-1].poll() is not None:
                    pytest.fail(f"Ray node {len(nodes)} did not join:\n{log.read_text()}", pytrace=False)
                time.sleep(2)
        done = _run([MAGIC141, "generate", "--prompt", "a red kite", "--seconds", "2", "--fps", "8",
                     "--windows", "parallel",
                     "--workers", "2", "--ray-address", address, "--out", str(tmp_path / "kite.mp4"),
                     "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "--json"],
                    {**env, "PREFECT_API_URL": prefect_api.api_url}, tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["frames"] == 16
    finally:
        stop_groups(nodes[::-1], 5)  # 'ray start --block' is slow to end on SIGTERM; its group is killed
