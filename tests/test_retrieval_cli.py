"""``magic141 index`` as a user runs it: build, query, info, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
from prefect.settings import PREFECT_API_URL

from flows.cli import main
from retrieval_index import build_index, open_index
from retrieval_index.demo import make_demo_corpus
from tasks.catalog import open_catalog
from tasks.catalog.index_builds import get_index_build

MAGIC141 = str(Path(sys.executable).with_name("magic141"))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAGIC141, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_build_query_and_info_from_the_command_line(
    prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, n=9, broken=True)
    built = run("index", "build", str(corpus), "--json", env={"PREFECT_API_URL": PREFECT_API_URL.value()}, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["images"] == 9 and summary["skipped"] == 4 and summary["index_type"] == "flat"
    index_dir = tmp_path / "out" / "index"
    assert summary["index_dir"] == str(index_dir), "default index folder: out/index"
    assert {Path(item["path"]).name for item in summary["skipped_files"]} == {"truncated.png", "notes.jpg",
                                                                                "empty.png", "README.txt"}
    with open_catalog(summary["catalog"]) as catalog:
        assert get_index_build(catalog, summary["version"])["status"] == "published"

    # The index was embedded in another process: the same tiny weights must come out here.
    reader = open_index(index_dir)
    picture = sorted((corpus / "shapes").iterdir())[1]
    best = reader.search_image(PIL.Image.open(picture), k=1)[0]
    assert best.path == picture and best.score == pytest.approx(1.0, abs=1e-5)

    monkeypatch.setenv("MAGIC141_INDEX_DIR", str(index_dir))
    capsys.readouterr()
    assert main(["index", "query", "a yellow triangle", "-k", "4", "--json"]) == 0
    matches = json.loads(capsys.readouterr().out)
    assert [m["rank"] for m in matches] == [1, 2, 3, 4]
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    assert [m["path"] for m in matches] == [str(m.path) for m in reader.search_text("a yellow triangle", k=4)]

    assert main(["index", "info", "--index-dir", str(index_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == summary["version"] and shown["images"] == 9
    assert shown["checksums"] == "4 files verified" and shown["versions"] == [summary["version"]]


def test_building_an_unchanged_corpus_says_so_and_force_rebuilds(
    prefect_api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    corpus, index_dir = tmp_path / "corpus", tmp_path / "index"
    make_demo_corpus(corpus, n=3)
    build = ["index", "build", str(corpus), "--index-dir", str(index_dir), "--incremental"]
    assert main([*build, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "published"

    assert main(build) == 0
    told = capsys.readouterr().out
    assert told.splitlines()[0] == (
        f"unchanged: version {first['version']} already indexes this corpus with these settings; "
        f"nothing was published (pass --force to build a new version anyway)"
    )
    assert "status: unchanged" in told
    assert main([*build, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["status"], again["version"]) == ("unchanged", first["version"])
    assert (again["images"], again["embedded"]) == (3, 0)

    assert main([*build, "--force", "--json"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["status"] == "published" and forced["version"] != first["version"]
    assert open_index(index_dir).version == forced["version"]


def test_build_prints_the_catalog_url_without_its_password(
    prefect_api, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    make_demo_corpus(tmp_path / "corpus", n=2)
    with_password = pg_url.replace("://postgres@", "://postgres:secret@", 1)
    build = ["index", "build", str(tmp_path / "corpus"), "--index-dir", str(tmp_path / "index"), "--catalog", with_password]
    assert main(build) == 0
    printed = capsys.readouterr().out
    assert f"   catalog: {pg_url.replace('://postgres@', '://postgres:***@', 1)}" in printed.splitlines()
    assert main([*build, "--json"]) == 0
    assert "secret" not in printed + capsys.readouterr().out


def test_a_corpus_without_usable_images_is_one_line_without_traceback(prefect_api, tmp_path: Path):
    """The corpus is found unusable inside the build flow; the user still reads one line, not Prefect's log."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("not an image")
    built = run("index", "build", str(corpus), "--index-dir", str(tmp_path / "index"),
                env={"PREFECT_API_URL": PREFECT_API_URL.value()}, cwd=tmp_path)
    assert built.returncode == 2 and built.stdout == ""
    assert len(built.stderr.splitlines()) == 1, built.stderr
    (line,) = built.stderr.splitlines()
    assert line.startswith("magic141: error: ") and "no usable image" in line, built.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    done = run("index", "query", "a cat", "--index-dir", str(tmp_path / "none"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"magic141: error: no index at {tmp_path / 'none'}; build one with "
        f"`magic141 index build CORPUS --index-dir {tmp_path / 'none'}`"
    ]


def test_bad_inputs_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, n=3)
    index_dir = tmp_path / "index"
    build_index([corpus], index_dir)
    (tmp_path / "file").write_text("x")
    new = ("--index-dir", str(tmp_path / "new"))
    cases = {
        ("index", "build", str(tmp_path / "nowhere"), *new): "does not exist",
        ("index", "build", str(tmp_path / "file"), *new): "is neither a folder nor a manifest",
        ("index", "build", str(corpus), "--index-dir", str(tmp_path / "file")): "exists but is not a folder",
        ("index", "build", str(corpus), "--index-dir", str(tmp_path / "no" / "idx")): "does not exist; create it",
        ("index", "build", str(corpus), "--index-dir", str(corpus / "idx")): "lies inside the corpus",
        ("index", "build", str(corpus), *new, "--model", "no-such-clip", "--pretrained", "w.pt"): "unknown CLIP model",
        ("index", "build", str(corpus), *new, "--model", "ViT-B-32"): "needs a local weights file",
        ("index", "build", str(corpus), *new, "--recall-target", "1.5"): "must satisfy 0 < floor <= target <= 1",
        ("index", "build", str(corpus), *new, "--catalog", "mysql://x/y"): "unsupported database",
        ("index", "query", "  ", "--index-dir", str(index_dir)): "query text is empty",
        ("index", "query", "a cat", "-k", "0", "--index-dir", str(index_dir)): "-k",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("magic141: error: ") and message in lines[0], (argv, lines)
    assert not (tmp_path / "catalog.db").exists(), "refused builds start no work"


def test_refused_build_does_not_create_the_default_index_parent(tmp_path: Path, monkeypatch, capsys):
    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, n=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAGIC141_INDEX_DIR", raising=False)
    monkeypatch.delenv("MAGIC141_CATALOG_URL", raising=False)
    assert main(["index", "build", str(corpus), "--catalog", "postgresql+psycopg://postgres@127.0.0.1:1/test"]) == 2
    assert capsys.readouterr().err.startswith("magic141: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"], "out/ is made only for a build that starts"
