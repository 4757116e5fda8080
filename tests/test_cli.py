"""The ``magic141`` console script as a user runs it: a catalogued video, or one clear line for bad input."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from flows.cli.common import bad_input_from_flow
from magic141.utils import sha256_file
from retrieval_index import RetrievalIndexError, build_index
from retrieval_index.demo import make_demo_corpus
from tasks.catalog import open_catalog
from tasks.runtime.ffmpeg import probe

MAGIC141 = str(Path(sys.executable).with_name("magic141"))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {name: value for name, value in os.environ.items() if name != "MAGIC141_INDEX_DIR"}
    return subprocess.run([MAGIC141, *args], capture_output=True, text=True, timeout=300,
                          env={**inherited, **(env or {})}, cwd=cwd)


def test_generate_then_show_against_a_prefect_server(prefect_api, tmp_path: Path):
    """With PREFECT_API_URL set the flow runs on that server; the catalog row describes the file on disk."""
    api_url = PREFECT_API_URL.value()
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    out = tmp_path / "boat.mp4"
    done = run("generate", "--prompt", "a paper boat on a river", "--seconds", "2", "--fps", "15",
               "--seed", "4", "--out", str(out), "--catalog", catalog, "--json", env={"PREFECT_API_URL": api_url})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    info = probe(out)
    assert (info.frames, info.fps, info.codec, info.pix_fmt) == (30, 15, "h264", "yuv420p")

    shown = run("catalog", "show", summary["id"][:8], "--catalog", catalog, "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert row["id"] == summary["id"] and row["output_sha256"] == sha256_file(out) == summary["sha256"]
    assert [(w["frame_start"], w["frame_end"]) for w in row["windows"]] == [(0, 30)], "one window of 30 frames"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(row["flow_run_id"])
    assert flow_run.state.is_completed()

    listed = run("catalog", "list", "--json", env={"MAGIC141_CATALOG_URL": catalog})
    assert [r["id"] for r in json.loads(listed.stdout)] == [summary["id"]]


def _write_bad_files(tmp: Path) -> None:
    from PIL import Image

    (tmp / "notes.png").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp / "truncated.png")
    (tmp / "truncated.png").write_bytes((tmp / "truncated.png").read_bytes()[:60])
    (tmp / "plain-file").write_text("x")
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp / "first.png")
    (tmp / "unbuilt-index").mkdir()


# Arguments that must be refused; "{tmp}" is the test's folder.
BAD_INPUTS = {
    "empty prompt": ["--prompt", ""],
    "blank prompt": ["--prompt", "   \t"],
    "zero seconds": ["--seconds", "0"],
    "negative seconds": ["--seconds", "-2"],
    "absurd seconds": ["--seconds", "601"],
    "seconds not a number": ["--seconds", "five"],
    "fps zero": ["--fps", "0"],
    "fps too high": ["--fps", "121"],
    "missing image": ["--image", "{tmp}/nope.png"],
    "image not an image": ["--image", "{tmp}/notes.png"],
    "truncated image": ["--image", "{tmp}/truncated.png"],
    "image is a folder": ["--image", "{tmp}"],
    "out folder missing": ["--out", "{tmp}/missing/v.mp4"],
    "out folder is a file": ["--out", "{tmp}/plain-file/v.mp4"],
    "out folder not writable": ["--out", "/proc/magic141-test.mp4"],
    "out exists": ["--out", "{tmp}/notes.png"],
    "malformed catalog url": ["--catalog", "definitely not a url"],
    "unreachable catalog": ["--catalog", "postgresql+psycopg://postgres@127.0.0.1:1/test"],
    "unknown preset": ["--preset", "huge"],
    "true cfg without negative prompt": ["--true-cfg", "4"],
    "unknown window mode": ["--windows", "sliding"],
    "unlisted size": ["--size", "50x50"],
    "size not WxH": ["--size", "big"],
    "ray address without workers": ["--ray-address", "127.0.0.1:6379"],
    "unknown prior": ["--prior", "camera"],
    "retrieve without an index": ["--prior", "retrieve"],
    "retrieve with an image": ["--prior", "retrieve", "--index-dir", "{tmp}/unbuilt-index",
                               "--image", "{tmp}/first.png"],
    "generate with an image": ["--prior", "generate", "--image", "{tmp}/first.png"],
    "user prior without image": ["--prior", "user"],
    "index folder missing": ["--prior", "retrieve", "--index-dir", "{tmp}/nope"],
    "index folder never built": ["--prior", "auto", "--index-dir", "{tmp}/unbuilt-index"],
    "threshold without auto": ["--prior-threshold", "0.5"],
    "strength with retrieve": ["--prior", "retrieve", "--prior-strength", "0.5"],
    "threshold out of range": ["--prior", "auto", "--prior-threshold", "1.5"],
    "strength zero": ["--prior", "auto", "--prior-strength", "0"],
}


def run_here(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str, str]:
    """``magic141 ARGS`` in this process (as the console script runs it), in ``tmp_path``: status, stdout, stderr."""
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAGIC141_INDEX_DIR", raising=False)
    status = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
@pytest.mark.parametrize("workers", ["0", "2"])
def test_low_memory_without_a_gpu_is_refused_up_front(workers: str, tmp_path: Path, monkeypatch, capsys):
    """In process or on a local Ray pool the models would run on this machine's (missing) GPU."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    status, out, err = run_here(["generate", "--prompt", "a cat", "--low-memory", "--workers", workers,
                                 "--out", str(tmp_path / "v.mp4")], tmp_path, monkeypatch, capsys)
    assert status == 2 and err.count("\n") == 1 and "no GPU is visible" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_nothing(case: str, tmp_path: Path, monkeypatch, capsys):
    _write_bad_files(tmp_path)
    before = sorted(tmp_path.iterdir())
    args = {"--prompt": "a cat", "--out": str(tmp_path / "v.mp4"), "--catalog": f"sqlite:///{tmp_path / 'catalog.db'}"}
    overrides = BAD_INPUTS[case]
    args.update(zip(overrides[::2], overrides[1::2]))
    status, out, err = run_here(["generate", "--seconds", "1", *[x for pair in args.items() for x in pair]],
                                tmp_path, monkeypatch, capsys)

    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magic141: error: "), err
    assert "Traceback" not in err and out == ""
    assert sorted(tmp_path.iterdir()) == before, "no video, catalog or work file is created"


@pytest.mark.parametrize("args", [["--seconds", "0"], ["--fps", "500"], ["--preset", "huge"], ["--steps", "0"],
                                  ["--catalog", "postgresql+psycopg://postgres@127.0.0.1:1/test"]])
def test_bad_input_without_out_does_not_create_the_default_folder(args: list[str], tmp_path, monkeypatch, capsys):
    status, _, err = run_here(["generate", "--prompt", "a cat", *args], tmp_path, monkeypatch, capsys)
    assert status == 2 and err.startswith("magic141: error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == [], "out/ is created only for a valid request"


def test_catalog_show_unknown_id_is_one_line(tmp_path: Path):
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    open_catalog(catalog).close()
    done = run("catalog", "show", "abc123", "--catalog", catalog)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no video" in done.stderr


def _fields(printed: str) -> dict[str, str]:
    """The ``name: value`` lines a command printed (not its tables), by name."""
    return dict(found.groups() for line in printed.splitlines() if (found := re.fullmatch(r" *(\w+): (.*)", line)))


def test_default_folder_and_catalog_and_user_text_shown_as_given(prefect_api, tmp_path: Path, monkeypatch, capsys):
    """Without --out and --catalog the video and its catalog go to out/; brackets in the prompt and path are not markup."""
    monkeypatch.delenv("MAGIC141_CATALOG_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "300")  # wide enough that no table cell wraps
    prompt = "a [red]fox[/] on [/] ice"
    common = ["generate", "--prompt", prompt, "--seconds", "1", "--fps", "6", "--seed", "2"]
    status, out, err = run_here(common, tmp_path, monkeypatch, capsys)
    assert status == 0, err
    first = _fields(out)
    assert first["video"] == str(tmp_path / "out" / "a-red-fox-on-ice-s2.mp4")
    assert first["catalog"] == f"sqlite:///{(tmp_path / 'out' / 'catalog.db').resolve()}"
    assert Path(first["video"]).is_file()

    odd = tmp_path / "out" / "a[red]b.mp4"
    status, out, err = run_here([*common, "--out", str(odd)], tmp_path, monkeypatch, capsys)
    assert status == 0, err
    second = _fields(out)
    assert (second["video"], second["catalog"]) == (str(odd), first["catalog"])
    assert odd.is_file()

    status, listed, err = run_here(["catalog", "list"], tmp_path, monkeypatch, capsys)
    assert status == 0, err
    rows = [line for line in listed.splitlines() if first["id"][:12] in line or second["id"][:12] in line]
    assert len(rows) == 2 and all(f" {prompt} " in row for row in rows), listed
    assert any(f" {odd} " in row for row in rows), listed
    status, shown, err = run_here(["catalog", "show", second["id"]], tmp_path, monkeypatch, capsys)
    assert status == 0, err
    assert (_fields(shown)["prompt"], _fields(shown)["output_path"]) == (prompt, str(odd))


def test_generate_prints_the_catalog_url_without_its_password(prefect_api, pg_url: str, tmp_path, monkeypatch, capsys):
    with_password = pg_url.replace("://postgres@", "://postgres:secret@", 1)
    status, out, err = run_here(["generate", "--prompt", "a cat", "--seconds", "1", "--fps", "6", "--out",
                                 str(tmp_path / "cat.mp4"), "--catalog", with_password], tmp_path, monkeypatch, capsys)
    assert status == 0, err
    assert _fields(out)["catalog"] == pg_url.replace("://postgres@", "://postgres:***@", 1)
    assert "secret" not in out + err


def test_flow_log_lines_are_dropped_for_bad_input_and_shown_otherwise():
    """``bad_input_from_flow``: bad input found inside a flow reads as one line; an internal failure keeps its traceback."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    console = io.StringIO()
    handler = PrefectConsoleHandler(stream=console)
    logging.getLogger().addHandler(handler)
    log = logging.getLogger("prefect.magic141-test")
    try:
        with pytest.raises(match="^the corpus has no usable images; add some$"):
            with bad_input_from_flow(RetrievalIndexError):
                try:
                    raise RetrievalIndexError("the corpus has no usable images;\n add some")
                except RetrievalIndexError:
                    log.exception("flow run failed")
                    raise
        assert console.getvalue() == "", "the failed run's log lines are dropped"

        with pytest.raises(KeyError):
            with bad_input_from_flow(RetrievalIndexError):
                try:
                    raise KeyError("frames")
                except KeyError:
                    log.exception("flow run crashed")
                    assert console.getvalue() == "", "held back while the flow runs"
                    raise
        assert "flow run crashed" in console.getvalue() and "Traceback" in console.getvalue()
    finally:
        logging.getLogger().removeHandler(handler)


# (arguments, the whole error line after "magic141: error: "); "{tmp}" is the test's folder.
PRIOR_ERRORS = [
    (["--prior", "retrieve", "--image", "{tmp}/first.png"],
     "--prior retrieve takes the first frame from the retrieval index and would ignore --image; "
     "drop --image, or keep it with --prior user"),
    (["--prior", "retrieve"],
     "--prior retrieve needs a retrieval index and none is configured; pass --index-dir DIR (or set "
     "MAGIC141_INDEX_DIR) to an index built with `magic141 index build`, or choose --prior generate"),
    (["--prior", "auto", "--index-dir", "{tmp}/unbuilt-index"],
     "no index at {tmp}/unbuilt-index; build one with `magic141 index build CORPUS --index-dir {tmp}/unbuilt-index`"),
    (["--prior-threshold", "0.5"],
     "--prior-threshold applies to --prior auto; add --prior auto or drop --prior-threshold"),
]


@pytest.mark.parametrize(("args", "message"), PRIOR_ERRORS)
def test_prior_errors_name_the_conflict_and_the_fix_before_anything_is_made(
    args: list[str], message: str, tmp_path: Path, monkeypatch, capsys
):
    _write_bad_files(tmp_path)
    before = sorted(tmp_path.iterdir())
    status, out, err = run_here(["generate", "--prompt", "a cat", "--seconds", "1", *args], tmp_path, monkeypatch, capsys)

    assert status == 2 and out == ""
    assert err.strip().splitlines() == [f"magic141: error: {message.replace('{tmp}', str(tmp_path))}"]
    assert sorted(tmp_path.iterdir()) == before, "not even the default out/ folder is created"


def test_prior_options_choose_the_first_frame_and_are_catalogued(prefect_api, tmp_path: Path):
    corpus, index_dir = tmp_path / "corpus", tmp_path / "index"
    pictures = make_demo_corpus(corpus, n=4)
    build_index([corpus], index_dir)
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    common = ("--prompt", "a yellow triangle", "--seconds", "1", "--fps", "6", "--seed", "3", "--catalog", catalog,
              "--json")

    retrieved = run("generate", *common, "--prior", "retrieve", "--index-dir", str(index_dir),
                    "--out", str(tmp_path / "retrieved.mp4"), env=env)
    blended = run("generate", *common, "--prior", "auto", "--prior-threshold", "1", "--prior-strength", "0.4",
                  "--out", str(tmp_path / "blended.mp4"), env={**env, "MAGIC141_INDEX_DIR": str(index_dir)})

    assert retrieved.returncode == 0, retrieved.stderr
    assert blended.returncode == 0, blended.stderr
    with open_catalog(catalog) as store:
        first = store.get_video(json.loads(retrieved.stdout)["id"])
        second = store.get_video(json.loads(blended.stdout)["id"])
    assert json.loads(retrieved.stdout)["prior"] == first["prior_source"] == "retrieve"
    assert Path(first["prior_image_path"]) in pictures
    assert first["prior_details"]["mode"] == "retrieve"
    assert first["prior_details"]["matches"][0]["path"] == first["prior_image_path"]
    assert json.loads(blended.stdout)["prior"] == second["prior_source"] == "generate"
    details = second["prior_details"]
    assert (details["mode"], details["conditioning"], details["threshold"], details["strength"]) == (
        "auto", "img2img", 1.0, 0.4)
    assert details["matches"] and "< threshold 1" in details["reason"]
    assert second["prior_image_path"] == str(tmp_path / "blended.prior.png")
    assert probe(tmp_path / "retrieved.mp4").frames == probe(tmp_path / "blended.mp4").frames == 6


def test_a_failed_runs_traceback_goes_to_the_log_file_and_the_terminal_keeps_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.cli import common as cli_common

    ensure_logging_setup()
    log = logging.FileHandler(tmp_path / "cli.log")
    monkeypatch.setattr(cli_common, "_library_handler", [log])
    monkeypatch.setenv("MAGIC141_LOG_FILE", str(tmp_path / "cli.log"))
    console = PrefectConsoleHandler()
    api = logging.Handler()  # stands for the handler that sends run logs to the Prefect API
    received: list[logging.LogRecord] = []
    api.emit = received.append
    logger = logging.getLogger("prefect.task_runs.test")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(console)
    logger.addHandler(api)
    monkeypatch.setattr(logging.getLogger("prefect"), "handlers", [console])
    try:
        cli_common._tracebacks_to_log_file()
        try:
            raise ConnectionError("catalog unreachable")
        except ConnectionError:
            logger.exception("Task run failed with exception: ConnectionError('catalog unreachable')")
    finally:
        logger.removeHandler(console)
        logger.removeHandler(api)
        log.close()
    shown = capsys.readouterr().err
    assert "Traceback" not in shown and shown.count("\n") == 1
    assert "Task run failed with exception" in shown and str(tmp_path / "cli.log") in shown
    assert "Traceback" in (tmp_path / "cli.log").read_text()
    assert received and received[0].exc_info is not None  # the API's copy keeps its traceback
