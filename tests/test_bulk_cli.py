"""``magic141 bulk`` as a user runs it: a batch summary, exit codes, and a killed batch completed by a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import PIL.Image
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from flows.cli import main
from magic141.utils import sha256_file
from tasks.catalog import open_catalog
from tasks.catalog.batches import get_batch, list_rows
from tasks.runtime.ffmpeg import probe

MAGIC141 = str(Path(sys.executable).with_name("magic141"))


def _command(csv: Path, out: Path, catalog: str, *extra: str) -> list[str]:
    return [MAGIC141, "bulk", str(csv), "--out-dir", str(out), "--catalog", catalog, "--retry-delay", "0", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def _work_dirs(out: Path) -> list[Path]:
    return sorted(out.glob(".*.work")) if out.is_dir() else []


def test_killed_batch_completes_on_rerun_without_rendering_done_rows_again(prefect_api, catalog_url: str, tmp_path: Path):
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps\n" + "".join(f"r{n},scene number {n},1,6\n" for n in range(3)))
    out = tmp_path / "out"
    process = subprocess.Popen(_command(csv, out, catalog_url, "--concurrency", "1"), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "killed.log").open("w"))
    deadline = time.monotonic() + 240
    first: list[dict] = []
    while not (first and _work_dirs(out)) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        with open_catalog(catalog_url) as catalog:
            first = catalog.list_videos()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first, (tmp_path / "killed.log").read_text()[-3000:]
    with open_catalog(catalog_url) as catalog:
        made = {video["id"]: video for video in catalog.list_videos()}
        (killed_batch,) = {video["batch_id"] for video in made.values()}
        assert get_batch(catalog, killed_batch)["status"] == "running"
    assert len(made) < 3, "the kill came before the batch finished"
    assert _work_dirs(out) and list(out.glob(".magic141-batch-*.lease")), "the killed run left its work and lease"
    stamps = {video["output_path"]: (Path(video["output_path"]).stat().st_mtime_ns, video["output_sha256"])
              for video in made.values()}

    rerun = subprocess.run(_command(csv, out, catalog_url, "--json"), env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["counts"]["done"] + summary["counts"]["skipped"] == 3
    assert summary["counts"]["skipped"] == len(made)
    with open_catalog(catalog_url) as catalog:
        videos = catalog.list_videos()
    assert len(videos) == 3 and set(made) <= {video["id"] for video in videos}
    for path, (mtime, sha) in stamps.items():
        assert Path(path).stat().st_mtime_ns == mtime and sha256_file(path) == sha, "done rows were not re-rendered"
    assert sorted(str(p) for p in out.glob("*.mp4")) == sorted(v["output_path"] for v in videos), "no orphan videos"
    assert all(probe(video["output_path"]).frames == 6 for video in videos)
    assert _work_dirs(out) == [] and list(out.glob(".magic141-batch-*")) == [], "the rerun cleared what the kill left"
    with open_catalog(catalog_url) as catalog:
        closed = get_batch(catalog, killed_batch)
        rows = list_rows(catalog, batch_id=killed_batch)
    assert closed["status"] == "interrupted" and closed["counts"]["pending"] == 0
    unfinished = [row for row in rows if row["status"] == "failed"]
    assert unfinished and len(unfinished) + closed["counts"]["done"] == 3
    assert all(row["reason"].startswith(f"interrupted: the bulk run's process {process.pid} on ") for row in unfinished)
    assert all("run the CSV again" in row["reason"] for row in unfinished)
    with get_client(sync_client=True) as client:
        killed_run = client.read_flow_run(uuid.UUID(closed["flow_run_id"]))
    assert killed_run.state.is_crashed(), "the Prefect UI no longer shows the killed run as Running"
    assert f"process {process.pid}" in killed_run.state.message


def test_summary_and_exit_codes(prefect_api, tmp_path: Path):
    PIL.Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "first.png")
    csv = tmp_path / "prompts.csv"
    csv.write_text('id,prompt,seconds,fps,image\nok,a still lake,1,6,first.png\nbad,"too, long",601,6,\n')
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    done = subprocess.run(_command(csv, tmp_path, catalog), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 done" in done.stdout and "1 rejected" in done.stdout and "seconds must be at most 600" in done.stdout
    strict = subprocess.run(_command(csv, tmp_path, catalog, "--strict"), env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert strict.returncode == 1 and "1 skipped" in strict.stdout


def test_summary_hides_the_catalog_password_and_shows_row_text_as_given(monkeypatch, capsys):
    from flows.cli.bulk import _print_summary

    monkeypatch.setenv("COLUMNS", "300")  # wide enough that no table cell wraps
    result = SimpleNamespace(
        batch_id="b" * 32, status="done", csv_path="/data/p.csv", out_dir="/out",
        catalog_url="postgresql+psycopg://magic141:secret@db.example:5432/videos",
        counts={"total": 1, "rejected": 1},
        rows=[{"row": 2, "key": "odd [red]key[/]", "status": "rejected", "prior_source": None,
               "reason": "prompt [/] is [bold]odd", "output": None}],
    )
    _print_summary(result, as_json=False)
    printed = capsys.readouterr().out
    assert " catalog: postgresql+psycopg://magic141:***@db.example:5432/videos" in printed.splitlines()
    assert " odd [red]key[/] " in printed and " prompt [/] is [bold]odd " in printed
    _print_summary(result, as_json=True)
    printed_json = capsys.readouterr().out
    assert json.loads(printed_json)["catalog"] == "postgresql+psycopg://magic141:***@db.example:5432/videos"
    assert "secret" not in printed + printed_json


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.csv"], "does not exist"),
        (["binary.csv"], "binary file"),
        (["prompts.csv", "--concurrency", "0"], "concurrency must be between 1"),
        (["prompts.csv", "--index-dir", "nope"], "index folder"),
        (["prompts.csv", "--index-dir", "unbuilt-index"], "no index at"),
        (["prompts.csv", "--preset", "huge"], "huge"),
        (["prompts.csv", "--quantize", "int3"], "unknown quantization level 'int3'"),
        pytest.param(["prompts.csv", "--low-memory"], "no GPU is visible",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, capsys):
    (tmp_path / "binary.csv").write_bytes(b"\x00\x01prompt")
    (tmp_path / "prompts.csv").write_text("prompt\na still lake\n")
    (tmp_path / "unbuilt-index").mkdir()
    args = [str(tmp_path / args[0]), *[str(tmp_path / a) if a in ("nope", "unbuilt-index") else a for a in args[1:]]]
    status = main(["bulk", *args, "--out-dir", str(tmp_path), "--catalog", f"sqlite:///{tmp_path / 'c.db'}"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magic141: error:") and message in lines[0], captured.err
    created = sorted(p.name for p in tmp_path.iterdir())
    assert created == ["binary.csv", "prompts.csv", "unbuilt-index"], "nothing is created"
    assert list((tmp_path / "unbuilt-index").iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [["--preset", "huge"], ["--concurrency", "0"], ["--catalog", "postgresql+psycopg://postgres@127.0.0.1:1/test"],
     ["--out-dir", "new", "--catalog", "postgresql+psycopg://postgres@127.0.0.1:1/test"]],
)
def test_bad_input_does_not_create_the_output_folder(args: list[str], tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAGIC141_CATALOG_URL", raising=False)
    (tmp_path / "prompts.csv").write_text("prompt\na still lake\n")
    status = main(["bulk", "prompts.csv", *args])
    captured = capsys.readouterr()
    assert status == 2 and captured.err.startswith("magic141: error: ") and captured.err.count("\n") == 1, captured.err
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.csv"], "neither out/ nor --out-dir is left behind"


def test_a_catalog_password_never_reaches_the_run_parameters(prefect_api, pg_url: str, tmp_path: Path):
    """The Prefect API stores every flow run's parameters; a catalog URL's password is kept out of them."""
    catalog = pg_url.replace("://postgres@", "://postgres:s3cret-pw@")  # trust authentication takes any password
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps\nboat,a paper boat,1,6\n")
    done = subprocess.run(_command(csv, tmp_path / "out", catalog, "--json"), env=_env(), capture_output=True,
                          text=True, timeout=420)
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout
    batch_id = json.loads(done.stdout)["batch_id"]
    with get_client(sync_client=True) as client:
        [run] = [run for run in client.read_flow_runs() if run.name == f"bulk prompts.csv {batch_id[:8]}"]
    assert run.parameters["catalog_url"] == "**********"
    with open_catalog(catalog) as store:
        assert get_batch(store, batch_id)["counts"]["done"] == 1


def test_a_big_batch_prints_a_page_and_counts_per_reason_and_never_an_escape_sequence(prefect_api, tmp_path: Path):
    rows = "".join(f"r{n},scene {n},601,6\n" for n in range(58))
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps\n" + rows + '"\x1b]0;owned\x07evil","\x1b[31m",1,6\n' + "dup,x,0,6\n")
    done = subprocess.run(_command(csv, tmp_path / "out", f"sqlite:///{tmp_path / 'c.db'}"), env=_env(),
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "... and 10 more row(s): every row is in --json" in done.stdout
    assert "58 │ seconds must be at most 600, got 601.0" in done.stdout.replace("  ", " ").replace("  ", " ")
    as_json = subprocess.run(_command(csv, tmp_path / "out", f"sqlite:///{tmp_path / 'c.db'}", "--json"), env=_env(),
                             capture_output=True, text=True, timeout=420)
    assert len(json.loads(as_json.stdout)["rows"]) == 60


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs filled to its last byte: the output folder of a disk that is full."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); needs root")
    try:
        with open(folder / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_named_as_such_and_leaves_nothing_partial(prefect_api, full_disk: Path, tmp_path: Path):
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps\nboat,a paper boat,1,6\n")
    catalog = f"sqlite:///{tmp_path / 'c.db'}"  # the catalog's own disk has room: the videos' disk is full
    command = _command(csv, full_disk, catalog, "--retries", "0", "--json")

    stopped = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=420)
    assert stopped.returncode == 1
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"magic141: error: no space left on {full_disk}: 0 B free; free space and rerun")
    assert sorted(path.name for path in full_disk.iterdir()) == ["filler"], "no empty lease is left"

    filler = full_disk / "filler"
    os.truncate(filler, filler.stat().st_size - 4096)  # room for the batch's lease, not for the video
    failed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=420)
    assert failed.returncode == 1, failed.stderr
    [row] = json.loads(failed.stdout)["rows"]
    assert row["status"] == "failed"
    assert row["reason"].startswith(f"no space left on {full_disk}: ") and row["reason"].endswith(
        " free; free space and rerun"), row["reason"]
    assert sorted(path.name for path in full_disk.iterdir()) == ["filler"], "nothing partial is left"
