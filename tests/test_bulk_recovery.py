"""What dead bulk runs leave behind is recovered by the next run; what live runs hold is never touched.

The runs here are real processes: a child that takes leases the way a bulk run does and is then
killed, the test process itself as a live owner, a bulk run held in the middle of a row by a
Prefect concurrency limit, and records of runs on other hosts (which only their heartbeat can
vouch for).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL

from flows.bulk import bulk_generate
from tasks.bulk import check_bulk, recover_out_dir
from tasks.catalog import open_catalog, redact
from tasks.catalog.batches import RowRecord, add_rows, get_batch, list_rows, start_batch
from tasks.runtime.batch_leases import batch_lease, batch_lease_path
from tasks.runtime.leases import LEASE_S, write_lease
from tasks.runtime.publish import NEW_GRACE_S, OWNER_FILE, work_folder

REPO = Path(__file__).resolve().parent.parent

# A child that does what a bulk run does before it is killed: it leases a batch and two work
# folders, and publishes each folder's video and contact sheet under their final names (hard
# links, as tasks.produce does). The test then catalogues one of the two videos.
KILLED_RUN = """
import os, sys, time
from pathlib import Path
from tasks.runtime.leases import heartbeat, write_lease
from tasks.runtime.publish import work_folder

out, url, batch_id, lease = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
write_lease(lease, batch_id=batch_id, catalog=sys.argv[5])
with heartbeat(lease), work_folder(out / "orphan.mp4", url) as orphan, work_folder(out / "kept.mp4", url) as kept:
    for folder, name in ((orphan, "orphan"), (kept, "kept")):
        for made, final in (("video.mp4", f"{name}.mp4"), ("video.jpg", f"{name}.jpg")):
            (folder / made).write_bytes(name.encode())
            os.link(folder / made, out / final)
    print("ready", flush=True)
    time.sleep(600)
"""


def _catalogue(catalog_url: str, output: Path) -> None:
    fields = {
        "prompt": "kept", "seed": 1, "prior_source": "generate", "prior_image_path": str(output.with_suffix(".png")),
        "prior_image_sha256": "a" * 64, "preset": "tiny", "weights_fingerprint": "f" * 64, "steps": 4,
        "seconds": 1.0, "window_layout": [{"start": 0, "keep": 6}], "output_path": str(output),
        "output_sha256": "b" * 64, "output_bytes": 4, "frames": 6, "fps": 6, "width": 64, "height": 48,
        "stage_timings": {"total": 1.0}, "library_versions": {}, "content_key": uuid.uuid4().hex,
    }
    with open_catalog(catalog_url) as catalog:
        catalog.add_video_once(**fields)


def _start_batch(catalog_url: str, out: Path, name: str) -> str:
    with open_catalog(catalog_url) as catalog:
        batch_id = start_batch(catalog, csv_path=f"/data/{name}.csv", csv_sha256="c" * 64, out_dir=str(out))
        add_rows(catalog, batch_id, [RowRecord(2, f"{name}-row", content_key=uuid.uuid4().hex)])
    return batch_id


def _foreign_record(path: Path, age_s: float, **facts: str) -> None:
    """A lease of a process on another host, last touched ``age_s`` ago."""
    record = {"host": "render-node-7", "machine": "another boot", "pid": 1, "started": "100", **facts}
    path.write_text(json.dumps(record))
    touched = time.time() - age_s
    os.utime(path, (touched, touched))


def _killed_child(out: Path, catalog_url: str, batch_id: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(out), catalog_url, batch_id, str(batch_lease_path(str(out), batch_id)),
         redact(catalog_url)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    ready = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert ready == "ready", child.stderr.read()[-3000:]


def _status(catalog_url: str, batch_id: str) -> str:
    with open_catalog(catalog_url) as catalog:
        return get_batch(catalog, batch_id)["status"]


def _assert_catalogued_files_exist(catalog_url: str) -> None:
    with open_catalog(catalog_url) as catalog:
        for video in catalog.list_videos(limit=1000):
            assert Path(video["output_path"]).is_file(), f"catalog row {video['id']} points at a missing file"


def test_dead_runs_are_closed_and_cleaned_and_live_ones_left_alone(prefect_api, catalog_url: str, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    settings = check_bulk(out, catalog_url)
    killed = _start_batch(catalog_url, out, "killed")
    _killed_child(out, catalog_url, killed)
    _catalogue(catalog_url, out / "kept.mp4")
    (out / "orphan.prior.png").write_bytes(b"not the dead run's file")
    reused = _start_batch(catalog_url, out, "reused-pid")
    write_lease(batch_lease_path(str(out), reused), batch_id=reused, catalog=redact(catalog_url))
    record = json.loads(batch_lease_path(str(out), reused).read_text())
    batch_lease_path(str(out), reused).write_text(json.dumps({**record, "started": "1"}))  # our pid, another process
    silent = _start_batch(catalog_url, out, "silent-host")
    _foreign_record(batch_lease_path(str(out), silent), LEASE_S + 5, batch_id=silent, catalog=redact(catalog_url))
    beating = _start_batch(catalog_url, out, "beating-host")
    _foreign_record(batch_lease_path(str(out), beating), 1, batch_id=beating, catalog=redact(catalog_url))
    live = _start_batch(catalog_url, out, "live")
    write_lease(batch_lease_path(str(out), live), batch_id=live, catalog=redact(catalog_url))
    elsewhere = _start_batch(catalog_url, out, "other-catalog")
    write_lease(batch_lease_path(str(out), elsewhere), batch_id=elsewhere, catalog="sqlite:////elsewhere/catalog.db")
    batch_lease_path(str(out), elsewhere).write_text(
        json.dumps({**json.loads(batch_lease_path(str(out), elsewhere).read_text()), "started": "1"})
    )
    legacy = _start_batch(catalog_url, out, "no-lease")
    old_work, new_work = out / ".old.abcd1234.work", out / ".new.abcd1234.work"
    for folder in (old_work, new_work):
        folder.mkdir()
        (folder / "prior.png").write_bytes(b"x")
    for path in (old_work / "prior.png", old_work):
        os.utime(path, (time.time() - LEASE_S - 5,) * 2)
    silent_work, beating_work = out / ".s.abcd1234.work", out / ".b.abcd1234.work"
    for folder, age in ((silent_work, LEASE_S + 5), (beating_work, 1)):
        folder.mkdir()
        _foreign_record(folder / OWNER_FILE, age, output=str(out / "x.mp4"), catalog=redact(catalog_url))
    killed_work = sorted(out.glob(".orphan.*.work")) + sorted(out.glob(".kept.*.work"))
    assert len(killed_work) == 2, "the killed run left its work folders"
    # Kills that fell while a folder was made (no owner record yet) or removed (renamed .gone first).
    removing, making, made_long_ago = out / ".g.abcd1234.gone", out / ".m.abcd1234.new", out / ".l.abcd1234.new"
    for folder in (removing, making, made_long_ago):
        folder.mkdir()
    (removing / "video.mp4").write_bytes(b"x")
    os.utime(made_long_ago, (time.time() - NEW_GRACE_S - 5,) * 2)

    with work_folder(out / "mine.mp4", catalog_url) as mine:
        recovery = recover_out_dir(settings)
        assert mine.suffix == ".work" and (mine / OWNER_FILE).is_file(), "a live run's work folder is not touched"
    assert not list(out.glob(".mine.*")), "a finished run leaves no folder in any phase"

    assert sorted(recovery.closed_batches) == sorted([killed, reused, silent])
    assert sorted(recovery.removed_work_dirs) == sorted(
        str(p) for p in [*killed_work, old_work, silent_work, removing, made_long_ago]
    )
    assert making.is_dir(), "a folder that may be about to receive its owner record is kept"
    for batch_id in (beating, live, elsewhere, legacy):
        assert _status(catalog_url, batch_id) == "running"
    for batch_id in (beating, live, elsewhere):
        assert batch_lease_path(str(out), batch_id).is_file()
    for batch_id in (killed, reused, silent):
        assert not batch_lease_path(str(out), batch_id).exists()
        assert _status(catalog_url, batch_id) == "interrupted"
    with open_catalog(catalog_url) as catalog:
        (row,) = list_rows(catalog, batch_id=killed)
        (silent_row,) = list_rows(catalog, batch_id=silent)
    assert row["status"] == "failed" and row["reason"].startswith("interrupted: the bulk run's process ")
    assert row["reason"].endswith("is no longer running; this row was not finished, run the CSV again to make it")
    assert silent_row["reason"].startswith("interrupted: the bulk run's process 1 on render-node-7 sent no heartbeat")
    assert new_work.is_dir() and beating_work.is_dir()
    assert not (out / "orphan.mp4").exists() and not (out / "orphan.jpg").exists(), "uncatalogued output removed"
    assert (out / "orphan.prior.png").is_file(), "a file the dead run did not publish is kept"
    assert (out / "kept.mp4").read_bytes() == b"kept" and (out / "kept.jpg").is_file(), "catalogued output kept"
    _assert_catalogued_files_exist(catalog_url)


def test_a_run_held_mid_row_is_not_touched_by_a_concurrent_run(prefect_api, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    (tmp_path / "held.csv").write_text("id,prompt,seconds,fps\nheld-1,a slow river,1,6\nheld-2,a slow cloud,1,6\n")
    (tmp_path / "quick.csv").write_text("id,prompt,seconds,fps\nquick,a quick bird,1,6\n")
    limit = f"hold-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    held_run = (
        "import sys; from flows.bulk import bulk_generate; "
        "r = bulk_generate(sys.argv[1], sys.argv[2], sys.argv[3], gpu_limit=sys.argv[4], retry_delay_s=0); "
        "print(r.batch_id, r.status, r.counts['done'])"
    )
    log = tmp_path / "held.log"
    held = None
    try:
        with concurrency(limit, occupy=1), log.open("w") as stderr:
            # The held run renders only once this test gives the limit's one slot back.
            held = subprocess.Popen(
                [sys.executable, "-c", held_run, str(tmp_path / "held.csv"), str(out), catalog_url, limit],
                cwd=REPO, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )
            deadline = time.monotonic() + 300
            while not list(out.glob(".held-1-*.work")) and held.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            held_work = list(out.glob(".held-1-*.work"))
            held_lease = list(out.glob(".magic141-batch-*.lease"))
            assert held_work and len(held_lease) == 1, log.read_text()[-3000:]

            quick = bulk_generate(str(tmp_path / "quick.csv"), str(out), catalog_url, gpu_limit=None, retry_delay_s=0)

            assert quick.counts["done"] == 1 and held.poll() is None
            assert held_work[0].is_dir() and held_lease[0].is_file(), "the held run's files are untouched"
            held_batch = json.loads(held_lease[0].read_text())["batch_id"]
            assert _status(catalog_url, held_batch) == "running"
        stdout, _ = held.communicate(timeout=300)
    finally:
        if held is not None and held.poll() is None:
            held.kill()
            held.wait()
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(limit)

    assert held.returncode == 0, log.read_text()[-3000:]
    assert stdout.strip().splitlines()[-1].split() == [held_batch, "done", "2"], "the held run finished undisturbed"
    assert not list(out.glob(".*.work")) and not list(out.glob(".magic141-batch-*")), "nothing is left behind"
    _assert_catalogued_files_exist(catalog_url)


def test_a_run_stopped_by_an_error_closes_its_own_batch(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    settings = check_bulk(out, catalog_url)

    with pytest.raises(KeyboardInterrupt), batch_lease(settings.out_dir, settings.catalog_url) as batch_id:
        with open_catalog(catalog_url) as catalog:
            start_batch(catalog, csv_path="/data/p.csv", csv_sha256="c" * 64, out_dir=str(out), batch_id=batch_id)
            add_rows(catalog, batch_id, [RowRecord(2, "only", content_key="k")])
        assert batch_lease_path(str(out), batch_id).is_file()
        raise KeyboardInterrupt

    assert _status(catalog_url, batch_id) == "interrupted"
    with open_catalog(catalog_url) as catalog:
        (row,) = list_rows(catalog, batch_id=batch_id)
    assert row["status"] == "failed" and row["reason"].startswith("interrupted: the run stopped with KeyboardInterrupt;")
    assert not list(out.glob(".magic141-batch-*")), "the lease is released once the batch is closed"
