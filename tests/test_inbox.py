"""The inbox: one claim at a time, oldest first, never over an existing claim; dead runs' claims are taken over.

Dead owners are real: a child process writes the claim's lease the way a claiming run does and
exits. The test process itself is the live owner; leases of other hosts count by their heartbeat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow

from flows.bulk import bulk_inbox
from tasks import inbox
from tasks.catalog import open_catalog
from tasks.inbox import claim_lease_path, claim_next
from tasks.runtime.leases import LEASE_S, read_lease, write_lease

REPO = Path(__file__).resolve().parent.parent
GOOD_CSV = "prompt,seconds,fps\na quiet pond,1,6\n"


@flow(name="test-inbox-claims")
def _claims(inbox: str, count: int) -> list[str | None]:
    """``count`` claims in a row, as a bulk-inbox run makes them (each file stays claimed)."""
    return [claim_next(inbox, 10) for _ in range(count)]


def _settled(path: Path, text: str, age_s: float = 60) -> Path:
    path.write_text(text)
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def _dead_lease(lease: Path, csv: str) -> None:
    """A lease written by a process that has exited since, as a run that crashed after claiming leaves it."""
    subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from tasks.runtime.leases import write_lease; "
                               "write_lease(Path(sys.argv[1]), csv=sys.argv[2])", str(lease), csv],
        cwd=REPO, check=True,
    )


def _foreign_lease(lease: Path, age_s: float) -> None:
    """A lease of a process on another host, last touched ``age_s`` ago."""
    lease.write_text(json.dumps({"host": "render-node-7", "machine": "another boot", "pid": 1, "started": "100"}))
    touched = time.time() - age_s
    os.utime(lease, (touched, touched))


def test_csvs_are_claimed_one_at_a_time_oldest_first(prefect_api, tmp_path: Path):
    _settled(tmp_path / "b.csv", "prompt\nb\n", age_s=30)
    _settled(tmp_path / "a.csv", "prompt\na\n", age_s=60)
    _settled(tmp_path / "notes.txt", "not a csv")
    (tmp_path / "fresh.csv").write_text("prompt\nstill being written")

    [first] = _claims(str(tmp_path), 1)
    assert first == str(tmp_path / "a.csv.processing")
    assert (tmp_path / "b.csv").is_file(), "the next file is claimed only when asked for"
    lease = read_lease(claim_lease_path(first))
    assert lease is not None and lease.owner.pid == os.getpid() and lease.facts["csv"] == "a.csv"
    assert _claims(str(tmp_path), 2) == [str(tmp_path / "b.csv.processing"), None]
    assert (tmp_path / "fresh.csv").is_file() and not (tmp_path / "a.csv").exists()
    assert Path(first).read_text() == "prompt\na\n"


def test_a_claim_never_replaces_an_existing_processing_file(prefect_api, tmp_path: Path):
    held = _settled(tmp_path / "a.csv.processing", "prompt\nthe earlier a.csv\n")
    write_lease(claim_lease_path(held), csv="a.csv")
    _settled(tmp_path / "a.csv", "prompt\na newer a.csv\n")

    assert _claims(str(tmp_path), 1) == [None]
    assert held.read_text() == "prompt\nthe earlier a.csv\n"
    assert (tmp_path / "a.csv").read_text() == "prompt\na newer a.csv\n"

    claim_lease_path(held).unlink()  # even with no lease naming it, the claiming link refuses the name
    assert inbox._claim(tmp_path / "a.csv") is None
    assert held.read_text() == "prompt\nthe earlier a.csv\n"
    assert (tmp_path / "a.csv").read_text() == "prompt\na newer a.csv\n"
    assert not claim_lease_path(held).exists()


def test_claims_of_dead_owners_are_taken_over_and_live_ones_left_alone(prefect_api, tmp_path: Path):
    dead = _settled(tmp_path / "dead.csv.processing", "prompt\ndead\n", age_s=90)
    _dead_lease(claim_lease_path(dead), "dead.csv")
    unleased = _settled(tmp_path / "unleased.csv.processing", "prompt\nunleased\n", age_s=80)
    silent = _settled(tmp_path / "silent.csv.processing", "prompt\nsilent\n", age_s=70)
    _foreign_lease(claim_lease_path(silent), LEASE_S + 60)
    remote = _settled(tmp_path / "remote.csv.processing", "prompt\nremote\n", age_s=100)
    _foreign_lease(claim_lease_path(remote), 5)
    live = _settled(tmp_path / "live.csv.processing", "prompt\nlive\n", age_s=100)
    write_lease(claim_lease_path(live), csv="live.csv")
    _settled(tmp_path / "orphan.csv", "prompt\norphan\n", age_s=60)
    _dead_lease(claim_lease_path(tmp_path / "orphan.csv.processing"), "orphan.csv")  # died before linking

    claims = _claims(str(tmp_path), 5)

    assert claims == [str(dead), str(unleased), str(silent), str(tmp_path / "orphan.csv.processing"), None]
    for claimed in claims[:4]:
        lease = read_lease(claim_lease_path(claimed))
        assert lease is not None and lease.owner.pid == os.getpid(), claimed
    assert read_lease(claim_lease_path(remote)).owner.host == "render-node-7"
    assert remote.is_file() and live.is_file()


def test_the_next_run_produces_a_dead_runs_claim_and_leaves_a_live_runs_claim(prefect_api, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    stale = _settled(inbox / "stale.csv.processing", GOOD_CSV)
    _dead_lease(claim_lease_path(stale), "stale.csv")
    live = _settled(inbox / "live.csv.processing", "prompt\nstill rendering elsewhere\n")
    write_lease(claim_lease_path(live), csv="live.csv")
    catalog = f"sqlite:///{tmp_path / 'c.db'}"

    handled = bulk_inbox(str(inbox), str(tmp_path / "videos"), catalog, settle_s=30)

    assert [Path(entry["csv"]).relative_to(inbox).as_posix() for entry in handled] == ["done/stale.csv"]
    assert (inbox / "done" / "stale.csv").read_text() == GOOD_CSV
    assert not stale.exists() and not claim_lease_path(stale).exists()
    assert live.is_file() and read_lease(claim_lease_path(live)).owner.pid == os.getpid()
    with open_catalog(catalog) as store:
        assert len(store.list_videos()) == 1
