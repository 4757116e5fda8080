"""The service: deployment objects, applying them to a real Prefect server, and the inbox flow filing CSVs."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.__main__ import main
from deployments.service import (
    BULK_DEPLOYMENT,
    GPU_POOL,
    PROCESS_POOL,
    ServiceConfig,
    apply_service,
    service_deployments,
)
from flows.bulk import bulk_inbox
from tasks.catalog import open_catalog


def _config(tmp_path: Path, **changes: object) -> ServiceConfig:
    return ServiceConfig(
        inbox=tmp_path / "inbox", out_dir=tmp_path / "videos", catalog_url=f"sqlite:///{tmp_path / 'c.db'}",
        corpus=(tmp_path / "corpus",), index_dir=tmp_path / "index", **changes,  # type: ignore[arg-type]
    )


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


def _cli_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--inbox", str(tmp_path / "inbox"), "--out-dir", str(tmp_path / "videos"),
        "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "--corpus", str(tmp_path / "corpus"),
        "--index-dir", str(tmp_path / "index"), *extra,
    ]


def test_cli_sets_the_clip_model_and_weights_of_the_nightly_rebuild(prefect_api, tmp_path: Path, capsys):
    weights = tmp_path / "models" / "clip-vit-b-32.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert main(_cli_args(tmp_path, "--clip-model", "ViT-B-32", "--clip-weights", str(weights))) == 0
    with get_client(sync_client=True) as client:
        rebuild = client.read_deployment_by_name("rebuild-index/rebuild-index")
    assert (rebuild.parameters["model"], rebuild.parameters["pretrained"]) == ("ViT-B-32", str(weights))

    assert main(_cli_args(tmp_path)) == 0, capsys.readouterr().err
    with get_client(sync_client=True) as client:
        rebuild = client.read_deployment_by_name("rebuild-index/rebuild-index")
    assert (rebuild.parameters["model"], rebuild.parameters["pretrained"]) == ("tiny", None), "the default is unchanged"


def test_cli_sets_the_model_of_the_bulk_runs(prefect_api, tmp_path: Path, monkeypatch, tiny_pipeline):
    from magic141.weights import save_i2v_components

    weights = save_i2v_components(tiny_pipeline.components, tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    args = _cli_args(tmp_path, "--weights", "weights", "--quantize", "int8", "--low-memory", "--workers", "2")
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

    handled = bulk_inbox(str(inbox), str(tmp_path / "videos"), catalog, settle_s=30)

    assert sorted(Path(entry["csv"]).relative_to(inbox).as_posix() for entry in handled) == [
        "done/good-1.csv", "failed/broken.csv"]
    assert (inbox / "done" / "good.csv").read_text() == "taken\n"
    assert (inbox / "done" / "good-1.csv").read_text().startswith("prompt,seconds,fps")
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [".inbox.lock", "fresh.csv"], "no claim is left"
    with open_catalog(catalog) as store:
        assert len(store.list_videos()) == 1
