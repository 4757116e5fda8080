"""The shipped toy default: its videos follow held-out prompts, its prior draws what captions name, and the
evaluation command that measures both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magic141.toy_world import split_captions

MAGIC141 = [sys.executable, "-m", "flows.cli"]


def test_the_evaluate_command_prints_a_table_writes_every_case_and_refuses_bad_settings(tmp_path: Path) -> None:
    out = tmp_path / "adherence.json"
    run = subprocess.run([*MAGIC141, "evaluate", "--preset", "tiny", "--count", "2", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "colour" in run.stdout and "motion direction" in run.stdout
    result = json.loads(out.read_text())
    assert [case["caption"] for case in result["cases"]] == [c.text for c in split_captions("held-out")[:2]]
    assert result["settings"]["steps"] == 4 and result["model"]["preset"] == "tiny"
    assert set(result["summary"]) >= {"colour", "shape", "background", "motion", "first_frame_psnr", "flicker"}
    for arguments, message in ((["--split", "test"], "unknown split 'test'; choose one of: held-out, train"),
                               (["--windows", "both"], "unknown window mode 'both'"),
                               (["--count", "0"], "the case count must be >= 1, got 0")):
        bad = subprocess.run([*MAGIC141, "evaluate", "--preset", "tiny", *arguments], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
