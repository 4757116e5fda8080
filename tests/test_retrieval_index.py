"""The retrieval index library: scanning, embedding cache, index choice and tuning, versioned publishing."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval_index import (
    EmbedderSpec,
    IndexPolicy,
    Match,
    RetrievalIndexError,
    ann,
    build_index,
    builder,
    open_index,
    scan_corpus,
    store,
)
from retrieval_index.demo import make_demo_corpus
from retrieval_index.embedder import load_embedder

N_IMAGES = 12


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    make_demo_corpus(folder, n=N_IMAGES, broken=True)
    return folder


def reasons(skipped: list[dict[str, str]]) -> dict[str, str]:
    return {Path(item["path"]).name: item["reason"] for item in skipped}


def test_scan_skips_broken_duplicate_and_escaping_files(corpus: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    make_demo_corpus(outside, n=2)
    later = corpus / "zz-later"  # walked after the originals
    later.mkdir()
    shutil.copy(next((corpus / "shapes").iterdir()), later / "copy.png")
    (later / "inside.png").symlink_to(corpus / "shapes" / sorted(os.listdir(corpus / "shapes"))[1])
    (corpus / "escape.png").symlink_to(next((outside / "shapes").iterdir()))
    (corpus / "escape-dir").symlink_to(outside / "shapes", target_is_directory=True)
    (corpus / ".hidden.png").write_bytes((later / "copy.png").read_bytes())

    result = scan_corpus([corpus])

    assert len(result.files) == N_IMAGES + 1, "the good images and the truncated one, whose header is valid"
    assert all(Path(item.path).is_relative_to(corpus) for item in result.files)
    why = {Path(item.path).name: item.reason for item in result.skipped}
    assert why["escape.png"].startswith("symlink to a file outside the corpus root")
    assert why["escape-dir"].startswith("symlink to a folder outside the corpus root")
    assert why["copy.png"].startswith("duplicate of ") and why["inside.png"].startswith("duplicate of ")
    assert why["notes.jpg"].startswith("not an image") and why["README.txt"].startswith("not an image")
    assert why["empty.png"] == "empty file"
    assert "truncated.png" not in why, "a truncated image has a valid header: the embed stage decodes and reports it"
    assert ".hidden.png" not in why


def test_build_indexes_good_images_and_reports_broken(corpus: Path, tmp_path: Path):
    report = build_index([corpus], tmp_path / "index")

    assert report.count == N_IMAGES and report.embedded == N_IMAGES and report.index_type == "flat"
    why = reasons(report.skipped)
    assert set(why) == {"truncated.png", "notes.jpg", "empty.png", "README.txt"}
    assert why["truncated.png"].startswith("cannot decode image") and "truncated" in why["truncated.png"]
    reader = open_index(tmp_path / "index")
    assert reader.version == report.version and reader.count == N_IMAGES
    assert reader.model_id == EmbedderSpec().model_id

    matches = reader.search_text("a red circle", k=5)
    assert len(matches) == 5 and all(isinstance(match, Match) for match in matches)
    scores = [match.score for match in matches]
    assert scores == sorted(scores, reverse=True)
    assert all(match.path.is_absolute() and match.path.is_file() for match in matches)
    assert len({match.row for match in matches}) == 5
    assert len(reader.search_text("anything", k=50)) == N_IMAGES, "k beyond the corpus returns the whole corpus"

    picture = sorted((corpus / "more").iterdir())[2]
    best = reader.search_image(PIL.Image.open(picture), k=3)
    assert best[0].path == picture and best[0].score == pytest.approx(1.0, abs=1e-5)
    assert best[0].sha256 == __import__("hashlib").sha256(picture.read_bytes()).hexdigest()
    with pytest.raises(RetrievalIndexError, match="k must be a positive integer"):
        reader.search_text("x", k=0)
    with pytest.raises(RetrievalIndexError, match="query text is empty"):
        reader.search_text("  ", k=3)


def test_manifests_csv_and_parquet(corpus: Path, tmp_path: Path):
    images = sorted((corpus / "shapes").iterdir())[:4]
    manifest = corpus / "images.csv"
    lines = ["path,caption"] + [f"{path.relative_to(corpus)},x" for path in images[:3]]
    manifest.write_text("\n".join([*lines, "missing.png,y", str(corpus / "notes.jpg") + ",z"]) + "\n")
    parquet = corpus / "lists" / "more.parquet"
    parquet.parent.mkdir()
    pq.write_table(pa.table({"path": [str(images[3]), "../" + str(images[0].relative_to(corpus))]}), parquet)

    result = scan_corpus([manifest, corpus / "lists" / "more.parquet"])

    assert [Path(item.path).resolve() for item in result.files] == [path.resolve() for path in images[:3]]
    why = {Path(item.path).name: item.reason for item in result.skipped}
    assert why["missing.png"] == "file not found" and why["notes.jpg"].startswith("not an image")
    assert why[images[3].name] == why[images[0].name] == (
        f"path outside the manifest's folder {parquet.parent}; not read (list only files inside that folder)"
    ), "a parquet manifest's entries are confined to its own folder too"
    bad = tmp_path / "bad.csv"
    bad.write_text("file\na.png\n")
    with pytest.raises(RetrievalIndexError, match="has no 'path' column"):
        scan_corpus([bad])
    with pytest.raises(RetrievalIndexError, match="does not exist"):
        scan_corpus([tmp_path / "nowhere"])


def test_manifest_entries_outside_its_folder_are_skipped_never_read(corpus: Path, tmp_path: Path):
    outside = make_demo_corpus(tmp_path / "elsewhere", n=3, start=50)
    inside = sorted((corpus / "shapes").iterdir())[:3]
    (corpus / "escape.png").symlink_to(outside[2])
    (corpus / "alias.png").symlink_to(inside[2])
    manifest = corpus / "list.csv"
    entries = [
        str(outside[0]),  # absolute, outside
        os.path.relpath(outside[1], corpus),  # ../elsewhere/..., outside
        "escape.png",  # a symlink inside the folder leading outside
        str(inside[0].relative_to(corpus)),  # relative, inside
        str(inside[1]),  # absolute, inside
        "alias.png",  # a symlink inside the folder leading inside
        "shapes/../" + str(inside[2].relative_to(corpus)),  # '..' that stays inside (same content as alias.png)
    ]
    manifest.write_text("path\n" + "\n".join(entries) + "\n")

    result = scan_corpus([manifest])

    assert {Path(item.path).resolve() for item in result.files} == {path.resolve() for path in inside}
    assert not {Path(item.path).resolve() for item in result.files} & {path.resolve() for path in outside}
    why = {item.path: item.reason for item in result.skipped}
    not_read = f"path outside the manifest's folder {corpus}; not read (list only files inside that folder)"
    assert why[str(outside[0])] == not_read
    assert why[str(corpus / entries[1])] == not_read
    assert why[str(corpus / "escape.png")] == f"symlink leading outside the manifest's folder {corpus}; not followed"
    assert len(result.skipped) == 4, "besides the three escaping entries, only the duplicate of alias.png"


def test_a_corpus_without_usable_images_fails_after_the_scan_before_clip_loads(tmp_path: Path, monkeypatch):
    def no_model(spec):
        raise AssertionError("CLIP was loaded for a corpus without images")

    monkeypatch.setattr(builder, "load_embedder", no_model)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "notes.jpg").write_text("not a picture")
    (broken / "README.txt").write_text("text")
    (broken / "empty.png").write_bytes(b"")
    index_dir = tmp_path / "index"

    with pytest.raises(RetrievalIndexError) as caught:
        build_index([broken], index_dir)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the corpus {broken} has no usable images: 3 files skipped (2 not an image, 1 empty file")
    assert message.endswith("add images to the corpus or fix the skipped files, then build again")
    assert store.published_versions(index_dir) == [] and not any((index_dir / store.STAGING).iterdir())
    (tmp_path / "none").mkdir()
    with pytest.raises(RetrievalIndexError, match=r"^the corpus \S+none holds no files; add images"):
        build_index([tmp_path / "none"], index_dir)


def test_incremental_rebuild_embeds_only_new_images(corpus: Path, tmp_path: Path):
    index_dir = tmp_path / "index"
    first = build_index([corpus], index_dir)
    make_demo_corpus(corpus / "added", n=3, start=N_IMAGES)

    second = build_index([corpus], index_dir, incremental=True)
    assert (second.count, second.embedded, second.cached) == (N_IMAGES + 3, 3, N_IMAGES)
    assert second.version != first.version and open_index(index_dir).version == second.version
    manifest = store.read_manifest(store.version_dir(index_dir, second.version))
    assert manifest["embedded"] == 3 and manifest["cached"] == N_IMAGES
    assert manifest["reused_hashes"] == N_IMAGES, "unchanged files keep their hash without being read again"

    full = build_index([corpus], index_dir, force=True)
    assert (full.embedded, full.cached) == (N_IMAGES + 3, 0), "without --incremental every image is embedded again"


def test_failed_build_leaves_previous_version_current(corpus: Path, tmp_path: Path, monkeypatch):
    index_dir = tmp_path / "index"
    first = build_index([corpus], index_dir)
    reader = open_index(index_dir)
    before = reader.search_text("a blue square", k=4)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder.ann, "build", interrupted)
    make_demo_corpus(tmp_path / "new", n=2, start=N_IMAGES)
    with pytest.raises(KeyboardInterrupt):
        build_index([corpus, tmp_path / "new"], index_dir)

    assert store.current_version(index_dir) == first.version
    assert store.published_versions(index_dir) == [first.version]
    assert list((index_dir / store.STAGING).iterdir()) == [], "a failed build removes its staging folder"
    assert open_index(index_dir).search_text("a blue square", k=4) == before
    assert reader.search_text("a blue square", k=4) == before


def test_killed_build_leaves_previous_version_current_and_queryable(corpus: Path, tmp_path: Path):
    index_dir = tmp_path / "index"
    first = build_index([corpus], index_dir)
    make_demo_corpus(tmp_path / "new", n=20, start=N_IMAGES)
    script = textwrap.dedent(
        """
        import os, signal, sys
        from retrieval_index import build_index

        def kill_mid_embedding(stage, done, total):
            if stage == "embed" and done > 0:
                os.kill(os.getpid(), signal.SIGKILL)

        build_index(sys.argv[1:3], sys.argv[3], batch_size=4, listener=kill_mid_embedding)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, str(corpus), str(tmp_path / "new"), str(index_dir)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    assert len(list((index_dir / store.STAGING).iterdir())) == 1, "the killed build was mid-way"
    assert store.current_version(index_dir) == first.version
    reader = open_index(index_dir)
    assert reader.version == first.version and len(reader.search_text("a green ring", k=3)) == 3

    again = build_index([corpus, tmp_path / "new"], index_dir)
    assert list((index_dir / store.STAGING).iterdir()) == [], "the next build clears what the killed one left"
    assert open_index(index_dir).version == again.version and again.count == N_IMAGES + 20


def test_reader_keeps_serving_its_version_while_a_new_one_is_published(corpus: Path, tmp_path: Path):
    index_dir = tmp_path / "index"
    build_index([corpus], index_dir)
    reader = open_index(index_dir)
    answer = reader.search_text("stripes", k=3)
    make_demo_corpus(tmp_path / "new", n=5, start=N_IMAGES)
    second = build_index([corpus, tmp_path / "new"], index_dir)

    assert reader.search_text("stripes", k=3) == answer and reader.count == N_IMAGES
    assert open_index(index_dir).version == second.version and open_index(index_dir).count == N_IMAGES + 5
    for _ in range(3):
        build_index([corpus], index_dir, force=True)
    assert len(store.published_versions(index_dir)) == store.KEEP_VERSIONS


def test_a_build_of_an_unchanged_corpus_publishes_nothing(corpus: Path, tmp_path: Path):
    index_dir = tmp_path / "index"
    first = build_index([corpus], index_dir)

    for incremental in (True, False):
        again = build_index([corpus], index_dir, incremental=incremental)
        assert again.unchanged and not first.unchanged
        assert again.version == first.version and store.current_version(index_dir) == first.version
        assert (again.count, again.index_type, again.recall) == (first.count, first.index_type, first.recall)
        assert again.skipped == first.skipped and (again.embedded, again.cached) == (0, 0)
    assert store.published_versions(index_dir) == [first.version]
    assert list((index_dir / store.STAGING).iterdir()) == [], "the unchanged build removes its staging folder"

    forced = build_index([corpus], index_dir, force=True, incremental=True)
    assert not forced.unchanged and forced.version != first.version
    assert store.published_versions(index_dir) == [first.version, forced.version]
    assert open_index(index_dir).version == forced.version


def picture_bytes(colour: tuple[int, int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    PIL.Image.new("RGB", (40, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "change",
    ["new image", "edited image", "renamed image", "removed image", "new broken file", "model", "policy", "sources"],
)
def test_any_change_of_corpus_or_settings_publishes_a_new_version(corpus: Path, tmp_path: Path, change: str):
    index_dir = tmp_path / "index"
    first = build_index([corpus], index_dir)
    picture = sorted((corpus / "shapes").iterdir())[0]
    sources: list[Path] = [corpus]
    options: dict = {}
    if change == "new image":
        (corpus / "shapes" / "new.png").write_bytes(picture_bytes((1, 2, 3)))
    elif change == "edited image":
        picture.write_bytes(picture_bytes((1, 2, 3)))
    elif change == "renamed image":
        picture.rename(picture.with_name("renamed" + picture.suffix))
    elif change == "removed image":
        picture.unlink()
    elif change == "new broken file":
        (corpus / "more" / "broken.png").write_bytes(b"\x89PNG but nothing else")
    elif change == "model":
        import json

        import open_clip
        from safetensors.torch import save_file

        from retrieval_index.embedder import TINY_CONFIG

        (tmp_path / "test-change-clip.json").write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(tmp_path / "test-change-clip.json")
        weights = tmp_path / "weights.safetensors"
        tiny = load_embedder(EmbedderSpec()).model.state_dict()
        save_file({name: tensor.contiguous() for name, tensor in tiny.items()}, str(weights))
        options["spec"] = EmbedderSpec("test-change-clip", str(weights))
    elif change == "policy":
        options["policy"] = IndexPolicy(recall_target=0.9)
    else:
        manifest = tmp_path / "list.csv"
        manifest.write_text("path\n" + "\n".join(str(path) for path in sorted((corpus / "more").iterdir())) + "\n")
        sources = [corpus, manifest]

    second = build_index(sources, index_dir, incremental=True, **options)

    assert not second.unchanged and second.version != first.version
    assert open_index(index_dir).version == second.version
    assert build_index(sources, index_dir, incremental=True, **options).unchanged, "and then it is up to date again"


def test_a_damaged_current_version_is_rebuilt_not_kept(corpus: Path, tmp_path: Path):
    index_dir = tmp_path / "index"
    first = build_index([corpus], index_dir)
    embeddings = store.version_dir(index_dir, first.version) / store.EMBEDDINGS_FILE
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 0xFF
    embeddings.write_bytes(bytes(data))

    again = build_index([corpus], index_dir, incremental=True)

    assert not again.unchanged and again.version != first.version
    assert open_index(index_dir).count == N_IMAGES


def test_published_files_are_readable_like_any_new_file(corpus: Path, tmp_path: Path):
    previous = os.umask(0o022)
    try:
        report = build_index([corpus], tmp_path / "index")
    finally:
        os.umask(previous)
    folder = store.version_dir(tmp_path / "index", report.version)
    published = [tmp_path / "index" / store.CURRENT, *folder.iterdir()]
    assert folder / store.MANIFEST in published and folder / store.INDEX_FILE in published
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in published} == {
        path.name: 0o644 for path in published
    }, "0666 less the umask (022), as for any new file; not mkstemp's 0600"


def test_corrupt_or_missing_index_is_a_clear_error(corpus: Path, tmp_path: Path):
    index_dir = tmp_path / "index"
    with pytest.raises(RetrievalIndexError, match=r"no index at .*; build one with `magic141 index build CORPUS"):
        open_index(index_dir)
    report = build_index([corpus], index_dir)
    index_file = store.version_dir(index_dir, report.version) / store.INDEX_FILE
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(RetrievalIndexError, match=r"index file .*index.faiss is corrupt \(sha256 does not match"):
        open_index(index_dir)
    (index_dir / store.CURRENT).write_text("20990101T000000000000Z-000000\n")
    with pytest.raises(RetrievalIndexError, match="current version .* is missing"):
        open_index(index_dir)


def test_a_second_concurrent_build_is_refused(corpus: Path, tmp_path: Path):
    with store.build_lock(tmp_path / "index"):
        with pytest.raises(RetrievalIndexError, match=r"another build of the index at .* is running \(process \d+\)"):
            build_index([corpus], tmp_path / "index")


def clustered(count: int, dimension: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count // 20, dimension)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), count)] + 0.6 * rng.standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("policy", "index_type"),
    [
        (IndexPolicy(flat_max=100, hnsw_max=10_000, tune_queries=300), "hnsw"),
        (IndexPolicy(flat_max=100, hnsw_max=1000, tune_queries=300), "ivf_flat"),
        (IndexPolicy(flat_max=100, hnsw_max=1000, memory_budget_bytes=1000, tune_queries=300, min_recall=0.5),
         "ivf_pq"),
    ],
)
def test_index_type_by_size_and_knob_tuned_to_the_recall_target(policy: IndexPolicy, index_type: str):
    vectors = clustered(5000, 32, seed=1)
    queries = clustered(5300, 32, seed=1)[5000:]  # same clusters, not in the corpus
    plan = ann.choose_plan(len(vectors), 32, policy)
    assert plan.index_type == index_type
    held_out = builder.held_out_rows(len(vectors), policy)
    assert len(held_out) == 300
    index = ann.build(vectors, plan, policy, np.setdiff1d(np.arange(len(vectors)), held_out))
    assert index.ntotal == len(vectors) - 300
    tuning = ann.tune(index, plan, policy, vectors, held_out)
    ann.add_rows(index, vectors, held_out)

    recall = ann.recall_at_k(ann.search(index, tuning.params, queries, 10, vectors)[1],
                             ann.exact_neighbours(vectors, queries, 10))
    if index_type != "ivf_pq":
        assert tuning.recall >= policy.recall_target and recall >= policy.recall_target - 0.02
        smaller = tuning.params.value - 1
        assert smaller not in tuning.trials or tuning.trials[smaller] < tuning.recall
    assert recall == pytest.approx(tuning.recall, abs=0.05), "the held-out estimate predicts recall on new queries"
    scores, rows = ann.search(index, tuning.params, queries[:5], 10, vectors)
    assert (np.diff(scores, axis=1) <= 1e-6).all() and (rows >= 0).all()


def test_plan_thresholds():
    policy = IndexPolicy()
    assert ann.choose_plan(5_000, 512, policy).index_type == "flat"
    assert ann.choose_plan(100_000, 512, policy).index_type == "hnsw"
    assert ann.choose_plan(1_000_000, 512, policy).factory == "IVF4096,Flat"
    assert ann.choose_plan(20_000_000, 512, policy).factory == "IVF16384_HNSW32,PQ64x8"
    with pytest.raises(ValueError, match="must satisfy 0 < floor <= target <= 1"):
        IndexPolicy(recall_target=1.5)


def test_ivf_pq_build_rescores_from_embeddings_on_disk(corpus: Path, tmp_path: Path):
    policy = IndexPolicy(flat_max=5, hnsw_max=5, memory_budget_bytes=100, min_recall=0.5)
    report = build_index([corpus], tmp_path / "index", policy=policy)
    assert report.index_type == "ivf_pq"
    reader = open_index(tmp_path / "index")
    picture = sorted((corpus / "shapes").iterdir())[0]
    best = reader.search_image(PIL.Image.open(picture), k=4)
    assert best[0].path == picture and best[0].score == pytest.approx(1.0, abs=1e-5), "scores are exact cosines"


def test_embedder_specs(tmp_path: Path):
    with pytest.raises(RetrievalIndexError, match="unknown CLIP model 'no-such-model'"):
        EmbedderSpec("no-such-model", "w.safetensors").check()
    with pytest.raises(RetrievalIndexError, match="needs a local weights file"):
        EmbedderSpec("ViT-B-32").check()
    with pytest.raises(RetrievalIndexError, match="does not exist"):
        EmbedderSpec("ViT-B-32", str(tmp_path / "missing.safetensors")).check()
    with pytest.raises(RetrievalIndexError, match="takes no weights file"):
        EmbedderSpec("tiny", str(tmp_path / "w.safetensors")).check()
    tiny = load_embedder(EmbedderSpec())
    vectors = tiny.embed_texts(["a red circle", "a blue square"])
    assert vectors.shape == (2, tiny.dimension) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_open_clip_model_from_a_local_safetensors_file(tmp_path: Path):
    import json

    import open_clip
    from safetensors.torch import save_file

    from retrieval_index.embedder import TINY_CONFIG

    (tmp_path / "test-tiny-clip.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(tmp_path / "test-tiny-clip.json")
    reference = load_embedder(EmbedderSpec())
    weights = tmp_path / "weights.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in reference.model.state_dict().items()}, str(weights))

    loaded = load_embedder(EmbedderSpec("test-tiny-clip", str(weights)))
    assert loaded.model_id.startswith("open_clip:test-tiny-clip@") and loaded.model_id != reference.model_id
    image = PIL.Image.new("RGB", (48, 48), (200, 30, 30))
    np.testing.assert_allclose(loaded.embed_images([image]), reference.embed_images([image]), atol=1e-5)
    np.testing.assert_allclose(loaded.embed_texts(["red"]), reference.embed_texts(["red"]), atol=1e-5)
