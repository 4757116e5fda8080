"""The service: deployment objects, applying them to a real Prefect server, and the inbox flow filing CSVs."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.__main__ import main
from deployments.service import (
    BULK_DEPLOYMENT,
    CATALOG_SECRET,
    GPU_POOL,
    PROCESS_POOL,
    ServiceConfig,
    apply_service,
    service_deployments,
)
from deployments.source import PROJECT_DIR
from flows.bulk import InboxFailed, bulk_inbox
from retrieval_index import build_index
from retrieval_index.demo import make_demo_corpus
from retrieval_index.store import current_version
from tasks.catalog import open_catalog, plain_url


def _config(tmp_path: Path, **changes: object) -> ServiceConfig:
    settings: dict[str, object] = {
        "inbox": tmp_path / "inbox", "out_dir": tmp_path / "videos", "catalog_url": f"sqlite:///{tmp_path / 'c.db'}",
        "corpus": (tmp_path / "corpus",), "index_dir": tmp_path / "index",
    }
    return ServiceConfig(**{**settings, **changes})  # type: ignore[arg-type]


def test_deployments_have_names_schedules_parameters_and_pools(tmp_path: Path):
    config = _config(tmp_path, inbox_cron="*/10 * * * *", gpu_slots=2)
    deployments = {deployment.name: (deployment, pool) for deployment, pool in service_deployments(config)}
    assert set(deployments) == {BULK_DEPLOYMENT, "rebuild-index"}
    bulk, bulk_pool = deployments[BULK_DEPLOYMENT]
    rebuild, rebuild_pool = deployments["rebuild-index"]
    assert (bulk_pool, rebuild_pool) == (GPU_POOL, PROCESS_POOL)
    assert [s.schedule.cron for s in bulk.schedules] == ["*/10 * * * *"]
    assert [s.schedule.cron for s in rebuild.schedules] == ["0 3 * * *"]
    assert bulk.parameters["inbox"] == str(tmp_path / "inbox") and bulk.parameters["out_dir"] == str(tmp_path / "videos")
    assert bulk.parameters["catalog_url"] == config.catalog_url and bulk.parameters["gpu_limit"] == "gpu"
    assert rebuild.parameters["corpus"] == [str(tmp_path / "corpus")] and rebuild.parameters["incremental"] is True
    assert bulk.entrypoint.endswith("bulk.py:bulk_inbox")


def test_apply_creates_pools_limit_and_deployments_on_the_server(prefect_api, tmp_path: Path):
    applied = apply_service(_config(tmp_path, gpu_slots=2))
    applied_again = apply_service(_config(tmp_path, gpu_slots=3, inbox_cron="*/15 * * * *"))
    assert applied == applied_again, "applying twice updates, it does not duplicate"
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(PROCESS_POOL).type == "process"
        assert client.read_work_pool(GPU_POOL).type == "process"
        limit = client.read_global_concurrency_limit_by_name("gpu")
        assert (limit.limit, limit.active) == (3, True)
        bulk = client.read_deployment_by_name(f"bulk-inbox/{BULK_DEPLOYMENT}")
        rebuild = client.read_deployment_by_name("rebuild-index/rebuild-index")
    assert bulk.work_pool_name == GPU_POOL and rebuild.work_pool_name == PROCESS_POOL
    assert [s.schedule.cron for s in bulk.schedules] == ["*/15 * * * *"]
    assert bulk.parameters["inbox"] == str(tmp_path / "inbox")


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A corpus and its index, as a service that has run before has them."""
    folder = tmp_path_factory.mktemp("service")
    make_demo_corpus(folder / "corpus")
    build_index([folder / "corpus"], folder / "index")
    return folder / "corpus", folder / "index"


def _cli_args(tmp_path: Path, *extra: str, index: tuple[Path, Path] | None = None) -> list[str]:
    corpus, index_dir = index if index is not None else (tmp_path / "corpus", tmp_path / "index")
    return [
        "--inbox", str(tmp_path / "inbox"), "--out-dir", str(tmp_path / "videos"),
        "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "--corpus", str(corpus),
        "--index-dir", str(index_dir), *extra,
    ]


def test_deployments_run_from_this_checkout_wherever_the_worker_starts(prefect_api, tmp_path: Path):
    apply_service(_config(tmp_path))
    with get_client(sync_client=True) as client:
        for name in (f"bulk-inbox/{BULK_DEPLOYMENT}", "rebuild-index/rebuild-index"):
            deployment = client.read_deployment_by_name(name)
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}], name
            assert (PROJECT_DIR / deployment.entrypoint.split(":")[0]).is_file()


def test_a_catalog_password_is_kept_in_a_secret_block_not_in_parameters(prefect_api, tmp_path: Path):
    url = "postgresql+psycopg://magic:s3cret-pw@db.internal:5432/catalog"
    apply_service(_config(tmp_path, catalog_url=url))
    with get_client(sync_client=True) as client:
        for name in (f"bulk-inbox/{BULK_DEPLOYMENT}", "rebuild-index/rebuild-index"):
            deployment = client.read_deployment_by_name(name)
            assert "s3cret-pw" not in json.dumps(deployment.parameters), name
            assert set(deployment.parameters["catalog_url"]) == {"$ref"}
    assert Secret.load(CATALOG_SECRET).get() == url
    resolved = bulk_inbox.validate_parameters({"inbox": "i", "out_dir": "o", "catalog_url": deployment.parameters[
        "catalog_url"]})
    assert plain_url(resolved["catalog_url"]) == url, "a run of the deployment gets the URL back"


def test_first_run_makes_the_inbox_folders_and_builds_a_missing_index(prefect_api, tmp_path: Path, capsys):
    make_demo_corpus(tmp_path / "corpus")
    assert main(_cli_args(tmp_path)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"no retrieval index in {tmp_path / 'index'} yet: building it once now" in out
    assert current_version(tmp_path / "index") is not None
    assert all((tmp_path / "inbox" / name).is_dir() for name in ("done", "failed"))
    version = current_version(tmp_path / "index")
    assert main(_cli_args(tmp_path)) == 0
    assert "building it" not in capsys.readouterr().out and current_version(tmp_path / "index") == version


def test_a_first_run_without_a_usable_corpus_schedules_nothing(prefect_api, tmp_path: Path, capsys):
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            client.delete_deployment(deployment.id)
    (tmp_path / "corpus").mkdir()
    assert main(_cli_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m deployments: error: ") and err.count("\n") == 1, err
    assert "corpus" in err, err
    with get_client(sync_client=True) as client:
        assert client.read_deployments() == [], "the inbox is not scheduled without an index"


def test_cli_sets_the_clip_model_and_weights_of_the_nightly_rebuild(prefect_api, tmp_path: Path, capsys, built_index):
    weights = tmp_path / "models" / "clip-vit-b-32.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert main(_cli_args(tmp_path, "--clip-model", "ViT-B-32", "--clip-weights", str(weights), index=built_index)) == 0
    with get_client(sync_client=True) as client:
        rebuild = client.read_deployment_by_name("rebuild-index/rebuild-index")
    assert (rebuild.parameters["model"], rebuild.parameters["pretrained"]) == ("ViT-B-32", str(weights))

    assert main(_cli_args(tmp_path, index=built_index)) == 0, capsys.readouterr().err
    with get_client(sync_client=True) as client:
        rebuild = client.read_deployment_by_name("rebuild-index/rebuild-index")
    assert (rebuild.parameters["model"], rebuild.parameters["pretrained"]) == ("tiny", None), "the default is unchanged"


def test_cli_sets_the_model_of_the_bulk_runs(prefect_api, tmp_path: Path, monkeypatch, tiny_pipeline, built_index):
    from magic141.weights import save_i2v_components

    weights = save_i2v_components(tiny_pipeline.components, tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    args = _cli_args(tmp_path, "--weights", "weights", "--quantize", "int8", "--low-memory", "--workers", "2",
                     index=built_index)
    assert main(args) == 0
    with get_client(sync_client=True) as client:
        bulk = client.read_deployment_by_name("bulk-inbox/bulk-generate")
    got = {name: bulk.parameters[name] for name in ("preset", "weights", "quantize", "low_memory", "workers")}
    assert got == {"preset": "tiny", "weights": str(weights), "quantize": "int8", "low_memory": True, "workers": 2}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--inbox-cron", "every five minutes"], "inbox schedule 'every five minutes'"),
        (["--index-cron", "61 3 * * *"], "index schedule '61 3 * * *'"),
        (["--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--clip-model", "ViT-Q-99"], "unknown CLIP model 'ViT-Q-99'"),
        (["--clip-model", "ViT-B-32"], "needs a local weights file"),
        (["--clip-model", "ViT-B-32", "--clip-weights", "missing.pt"], "missing.pt' does not exist"),
        (["--clip-weights", "missing.pt"], "tiny CLIP model has built-in random weights"),
        (["--gpu-slots", "0"], "gpu slots must be at least 1"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--quantize", "int3"], "unknown quantization level 'int3'"),
        (["--weights", "no-such-weights"], "no-such-weights' does not exist"),
        (["--workers", "-1"], "workers must be between 0 and"),
    ],
)
def test_bad_settings_are_one_line_and_create_nothing_on_the_server(
    prefect_api, tmp_path: Path, capsys, extra: list[str], named: str
):
    with get_client(sync_client=True) as client:
        for pool in (PROCESS_POOL, GPU_POOL):
            try:
                client.delete_work_pool(pool)
            except ObjectNotFound:
                pass

    assert main(_cli_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m deployments: error: ") and named in err and err.count("\n") == 1, err
    with get_client(sync_client=True) as client:
        for pool in (PROCESS_POOL, GPU_POOL):
            with pytest.raises(ObjectNotFound):
                client.read_work_pool(pool)


def test_an_unreachable_prefect_api_is_one_line(tmp_path: Path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        assert main(_cli_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m deployments: error: cannot reach the Prefect API at {url}"), err
    assert "prefect server start" in err and err.count("\n") == 1, err


def test_no_prefect_api_url_is_one_line(tmp_path: Path, capsys):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(_cli_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m deployments: error: PREFECT_API_URL is not set"), err
    assert err.count("\n") == 1, err


def test_inbox_files_good_csvs_in_done_bad_ones_in_failed_and_leaves_fresh_ones(prefect_api, tmp_path: Path):
    inbox = tmp_path / "inbox"
    (inbox / "done").mkdir(parents=True)
    (inbox / "done" / "good.csv").write_text("taken\n")  # an older file of the same name is kept
    (inbox / "good.csv").write_text("prompt,seconds,fps\na quiet pond,1,6\n")
    (inbox / "broken.csv").write_bytes(b"\x00\x01 not text")
    old = time.time() - 60
    for name in ("good.csv", "broken.csv"):
        os.utime(inbox / name, (old, old))
    (inbox / "fresh.csv").write_text("prompt\nstill being written")
    catalog = f"sqlite:///{tmp_path / 'c.db'}"

    state = bulk_inbox(str(inbox), str(tmp_path / "videos"), catalog, settle_s=30, return_state=True)

    assert state.is_failed() and state.message == "1 of 2 CSV(s) failed: broken.csv", state.message
    with pytest.raises(InboxFailed):
        state.result()  # what a direct call of the flow raises
    handled = state.result(raise_on_failure=False).handled
    assert sorted(Path(entry["csv"]).relative_to(inbox).as_posix() for entry in handled) == [
        "done/good-1.csv", "failed/broken.csv"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bulk-inbox"])),
                                           flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
    assert run.name == "inbox inbox"
    assert "| good.csv | `" + str(inbox / "done" / "good-1.csv") + "` |" in artifact.data
    assert "| broken.csv | `" + str(inbox / "failed" / "broken.csv") + "` | - |" in artifact.data
    assert {child.name.rsplit(" ", 1)[0] if child.state.is_completed() else child.name for child in children} == {
        "bulk good.csv", "bulk broken.csv"}, "each batch is named after the CSV as it was dropped"
    assert (inbox / "done" / "good.csv").read_text() == "taken\n"
    assert (inbox / "done" / "good-1.csv").read_text().startswith("prompt,seconds,fps")
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [".inbox.lock", "fresh.csv"], "no claim is left"
    with open_catalog(catalog) as store:
        assert len(store.list_videos()) == 1


def test_the_service_command_of_magic141_is_the_same_command(tmp_path: Path, capsys):
    """``magic141 service apply`` takes the options of ``python -m deployments`` and refuses the same way."""
    from flows.cli import main as magic141

    args = [arg for arg in _cli_args(tmp_path) if arg != "--corpus" and not arg.endswith("corpus")]
    assert magic141(["service", "apply", *args]) == 2
    err = capsys.readouterr().err
    assert err == "magic141: error: give --corpus\n", err
    assert main(args) == 2
    assert capsys.readouterr().err == "python -m deployments: error: give --corpus\n"
