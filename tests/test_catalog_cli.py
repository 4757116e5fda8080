"""``magic141 catalog list --status`` and ``catalog export`` run as a user runs them, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from tasks.catalog import open_catalog
from tasks.catalog.batches import RowRecord, add_rows, set_row, start_batch

MAGIC141 = str(Path(sys.executable).with_name("magic141"))


def run(*args: str, cwd: Path | None = None, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAGIC141_CATALOG_URL"}
    return subprocess.run([MAGIC141, *args], capture_output=True, text=True, timeout=300, cwd=cwd, umask=umask,
                          env={**env, "COLUMNS": "300"})  # wide enough that no table cell wraps


def video_fields(n: int) -> dict[str, Any]:
    return {
        "prompt": f"a fox, take {n}\nsecond line ✓", "seed": n, "prior_source": "generate",
        "prior_image_path": f"/out/{n}.prior.png", "prior_image_sha256": "a" * 64, "preset": "tiny",
        "weights_fingerprint": "f" * 64, "steps": 4, "guidance": 6.0, "seconds": 1.0,
        "window_layout": [{"start": 0, "keep": 12}], "output_path": f"/out/{n}.mp4", "output_sha256": "b" * 64,
        "output_bytes": 100, "frames": 12, "fps": 12, "width": 64, "height": 48, "stage_timings": {"total": 1.0},
        "library_versions": {"torch": "2"}, "content_key": f"{n:064x}", "thumbnail_path": f"/out/{n}.jpg",
    }


@pytest.fixture
def filled(catalog_url: str) -> dict[str, Any]:
    """Two videos, a batch with one row of each status."""
    with open_catalog(catalog_url) as catalog:
        batch_id = start_batch(catalog, csv_path="/data/prompts.csv", csv_sha256="c" * 64, out_dir="/out")
        add_rows(catalog, batch_id, [
            RowRecord(2, "fox"), RowRecord(3, "boat"), RowRecord(4, "wall"), RowRecord(5, "late"),
            RowRecord(6, "bad", "rejected", "seconds must be at most 600, got 601.0; split longer videos"),
            RowRecord(7, "odd [red]key[/]", "rejected", "prompt [/] is [bold]odd"),
        ])
        made, _ = catalog.add_video_once(**video_fields(1))
        other, _ = catalog.add_video_once(**video_fields(2))
        set_row(catalog, batch_id, 2, "done", video_id=made, attempts=1)
        set_row(catalog, batch_id, 3, "skipped", video_id=other)
        set_row(catalog, batch_id, 4, "failed", reason="render actor died: CUDA out of memory", attempts=3)
    return {"url": catalog_url, "batch": batch_id, "made": made, "other": other}


def test_list_by_status_shows_batch_rows(filled: dict[str, Any]) -> None:
    failed = run("catalog", "list", "--status", "failed", "--json", "--catalog", filled["url"])
    assert failed.returncode == 0, failed.stderr
    (row,) = json.loads(failed.stdout)
    assert (row["batch_id"], row["row_number"], row["row_key"], row["attempts"]) == (filled["batch"], 4, "wall", 3)
    assert row["reason"] == "render actor died: CUDA out of memory" and row["csv_path"] == "/data/prompts.csv"

    rejected = run("catalog", "list", "--status", "rejected", "--catalog", filled["url"])
    assert rejected.returncode == 0, rejected.stderr
    assert "bad" in rejected.stdout and "601" in rejected.stdout and filled["batch"][:12] in rejected.stdout
    assert " odd [red]key[/] " in rejected.stdout and " prompt [/] is [bold]odd " in rejected.stdout, "shown as given"
    assert "wall" not in rejected.stdout

    videos = json.loads(run("catalog", "list", "--json", "--catalog", filled["url"]).stdout)
    assert {video["id"] for video in videos} == {filled["made"], filled["other"]}, "without --status: videos"


def test_export_jsonl_to_stdout_and_to_a_file(filled: dict[str, Any], tmp_path: Path) -> None:
    printed = run("catalog", "export", "--format", "jsonl", "--catalog", filled["url"])
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    videos = [json.loads(line) for line in lines]
    assert [video["id"] for video in videos] == [filled["made"], filled["other"]]
    assert videos[0]["prompt"] == "a fox, take 1\nsecond line ✓" and videos[0]["windows"] == []
    assert videos[0]["batch_row"]["row_key"] == "fox" and videos[0]["batch_row"]["status"] == "done"
    assert videos[1]["batch_row"] is None, "a skipped row did not make the video"
    assert videos[0]["thumbnail_path"] == "/out/1.jpg"

    target = tmp_path / "export.jsonl"
    target.write_text("old export\n")
    written = run("catalog", "export", "--out", str(target), "--catalog", filled["url"])
    assert written.returncode == 0, written.stderr
    assert f"exported 2 videos to {target}" in written.stdout
    assert target.read_text(encoding="utf-8").splitlines() == lines
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("catalog.db")) == ["export.jsonl"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, "readable like any new file under umask 022"

    private = tmp_path / "private.jsonl"
    assert run("catalog", "export", "--out", str(private), "--catalog", filled["url"], umask=0o077).returncode == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600, "the user's umask decides"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--status", "lost"], "unknown row status 'lost'; use one of pending, done, skipped, failed, rejected"),
        (["list", "--status", "failed", "--limit", "-1"], "list limit must be 0 or more"),
        (["export", "--format", "csv"], "unknown export format 'csv'; use one of jsonl"),
        (["export", "--out", "{tmp}/missing/export.jsonl"], "does not exist; create it first"),
    ],
)
def test_bad_requests_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.db"
    if "--limit" in args:  # checked by the catalog, which must exist
        open_catalog(f"sqlite:///{catalog}").close()
    done = run("catalog", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--catalog", f"sqlite:///{catalog}")

    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magic141: error: ") and message in lines[0], done.stderr
    assert done.stdout == ""
    if "--limit" not in args:
        assert not catalog.exists(), "refused before opening the catalog"


@pytest.mark.parametrize("command", [["list"], ["list", "--status", "failed"], ["show", "abc123"], ["export"]])
@pytest.mark.parametrize("given", [True, False], ids=["--catalog", "default"])
def test_reading_a_sqlite_catalog_that_does_not_exist_creates_nothing(
    command: list[str], given: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAGIC141_CATALOG_URL", raising=False)
    (tmp_path / "out").mkdir()
    shown = "sqlite:///typo.db" if given else f"sqlite:///{(tmp_path / 'out' / 'catalog.db').resolve()}"
    status = main(["catalog", *command, *(["--catalog", "sqlite:///typo.db"] if given else [])])

    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.splitlines() == [
        f"magic141: error: catalog {shown} does not exist; check --catalog or $MAGIC141_CATALOG_URL"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and list((tmp_path / "out").iterdir()) == []
