"""The prior policy (paper Eq. 1-3): each mode's choice, the recorded details, and clear refusals."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import pytest

from magic141.prior import ImagePrior
from retrieval_index import build_index, open_index
from retrieval_index.demo import make_demo_corpus
from tasks import prior as prior_stage
from tasks.prior import prepare_prior
from tasks.prior_policy import PRIOR_MODES, StaleMatch, decide_prior
from tasks.request import GenerateRequest
from tasks.runtime.publish import PRIOR_FILE


@dataclass(frozen=True)
class Match:
    """The shape of retrieval_index.Match."""

    path: Path
    sha256: str
    score: float
    row: int


MATCHES = [
    Match(Path("/corpus/b.jpg"), "b" * 64, 0.21, 7),
    Match(Path("/corpus/a.jpg"), "a" * 64, 0.42, 3),
]


def test_user_image_is_used_as_it_is() -> None:
    for mode in ("user", "auto"):
        decision = decide_prior(mode, image="/data/first.png", matches=MATCHES)
        assert (decision.source, decision.conditioning, decision.image) == ("user", "none", Path("/data/first.png"))
        assert decision.details["mode"] == mode and decision.details["source"] == "user"


def test_retrieve_uses_the_best_match_whatever_its_score() -> None:
    decision = decide_prior("retrieve", matches=MATCHES, threshold=0.9)

    assert (decision.source, decision.image) == ("retrieve", Path("/corpus/a.jpg"))
    assert [m["row"] for m in decision.details["matches"]] == [3, 7], "recorded best first"
    assert decision.details["matches"][0] == {"path": "/corpus/a.jpg", "sha256": "a" * 64, "score": 0.42, "row": 3}


def test_generate_is_text_alone() -> None:
    decision = decide_prior("generate", matches=None)
    assert (decision.source, decision.conditioning, decision.image, decision.init_image) == ("generate", "none", None, None)


def test_auto_uses_a_match_that_passes_the_threshold() -> None:
    decision = decide_prior("auto", matches=MATCHES, threshold=0.42)

    assert (decision.source, decision.image) == ("retrieve", Path("/corpus/a.jpg"))
    assert decision.details["threshold"] == 0.42 and ">= threshold" in decision.details["reason"]


def test_auto_below_the_threshold_generates_img2img_from_the_best_match() -> None:
    decision = decide_prior("auto", matches=MATCHES, threshold=0.5, strength=0.7)

    assert (decision.source, decision.conditioning) == ("generate", "img2img")
    assert (decision.init_image, decision.strength, decision.image) == (Path("/corpus/a.jpg"), 0.7, None)
    assert decision.details["strength"] == 0.7 and "< threshold" in decision.details["reason"]
    json.dumps(decision.details)


def test_auto_below_the_threshold_uses_an_image_prompt_adapter_when_there_is_one() -> None:
    decision = decide_prior("auto", matches=MATCHES, threshold=0.5, image_prompt_adapter=True)

    assert (decision.source, decision.conditioning, decision.init_image) == ("generate", "image_prompt", None)
    assert decision.reference_images == (Path("/corpus/a.jpg"), Path("/corpus/b.jpg"))


@pytest.mark.parametrize(("matches", "reason"), [(None, "no retrieval index"), ([], "found no match")])
def test_auto_without_index_or_match_generates_from_text(matches: list[Match] | None, reason: str) -> None:
    decision = decide_prior("auto", matches=matches)
    assert (decision.source, decision.conditioning) == ("generate", "none")
    assert reason in decision.details["reason"] and decision.details["matches"] == []


@pytest.mark.parametrize(
    ("mode", "kwargs", "message"),
    [
        ("retrieve", {"matches": None}, "needs a retrieval index and none is configured"),
        ("retrieve", {"matches": []}, "found no match in the retrieval index"),
        ("user", {}, "prior 'user' needs an image"),
        ("generate", {"image": "/x.png"}, "prior 'generate' would ignore the given image"),
        ("retrieve", {"image": "/x.png", "matches": MATCHES}, "prior 'retrieve' would ignore the given image"),
        ("camera", {}, "prior 'camera' is not one of auto, user, retrieve, generate"),
        ("auto", {"threshold": 1.5}, "threshold must be a cosine score in [-1, 1]"),
        ("auto", {"threshold": math.nan}, "threshold must be a cosine score"),
        ("auto", {"strength": 0.0}, "strength must be in (0, 1]"),
        ("auto", {"strength": 1.01}, "strength must be in (0, 1]"),
        ("auto", {"matches": [Match(Path("/c/x.jpg"), "x" * 64, math.nan, 0)]}, "has score nan; rebuild the index"),
    ],
)
def test_impossible_requests_are_one_line_errors(mode: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        decide_prior(mode, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


STALE = StaleMatch(Match(Path("/corpus/gone.jpg"), "c" * 64, 0.9, 5), "file not found")


def test_stale_matches_are_recorded_never_used() -> None:
    decision = decide_prior("retrieve", matches=MATCHES[:1], stale=[STALE])

    assert decision.image == Path("/corpus/b.jpg"), "the usable match, though the stale one scored higher"
    assert [m["path"] for m in decision.details["matches"]] == ["/corpus/b.jpg"]
    assert decision.details["stale_matches"] == [
        {"path": "/corpus/gone.jpg", "sha256": "c" * 64, "score": 0.9, "row": 5, "problem": "file not found"}
    ]


def test_no_usable_match_refuses_retrieve_and_lets_auto_generate_from_text() -> None:
    with pytest.raises(ValueError) as info:
        decide_prior("retrieve", matches=[], stale=[STALE])
    message = str(info.value)
    assert "\n" not in message and message.startswith("prior 'retrieve' found no usable match in the retrieval index")
    assert "/corpus/gone.jpg: file not found" in message and "rebuild the index" in message

    decision = decide_prior("auto", matches=[], stale=[STALE, STALE])
    assert (decision.source, decision.conditioning, decision.init_image) == ("generate", "none", None)
    assert decision.details["reason"].startswith("no usable match: all 2 matches are missing or changed")
    assert len(decision.details["stale_matches"]) == 2


@pytest.fixture
def index(tmp_path: Path) -> Path:
    make_demo_corpus(tmp_path / "corpus", n=4)
    build_index([tmp_path / "corpus"], tmp_path / "index")
    return tmp_path / "index"


def run_prior(index: Path, mode: str, work_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(prior_stage, "get_run_logger", lambda: logging.getLogger("prior-test"))
    request = GenerateRequest.from_options("a red circle", str(work_dir / "video.mp4"), "sqlite://", seed=3, prior=mode,
                                           index_dir=str(index), create_folder=True)
    return prepare_prior.fn(request, str(work_dir))


def test_prior_stage_skips_matches_whose_file_is_gone_or_changed(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    best, second, third, _ = open_index(index).search_text("a red circle", k=4)
    second.path.unlink()
    shutil.copy(third.path, best.path)  # the best match's file now holds another picture

    with caplog.at_level(logging.WARNING, logger="prior-test"):
        result = run_prior(index, "retrieve", tmp_path, monkeypatch)

    assert (result.source, result.path) == ("retrieve", str(third.path))
    assert result.details is not None and result.details["matches"][0]["path"] == str(third.path)
    stale = {item["path"]: item["problem"] for item in result.details["stale_matches"]}
    assert stale[str(second.path)] == "file not found"
    assert stale[str(best.path)].startswith("content changed since the index was built")
    assert set(stale) == {str(best.path), str(second.path)}
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert str(best.path) in warned and str(second.path) in warned


def test_prior_stage_with_no_usable_match(index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(tmp_path / "corpus")

    with pytest.raises(ValueError, match="prior 'retrieve' found no usable match in the retrieval index: all 4 "):
        run_prior(index, "retrieve", tmp_path, monkeypatch)
    result = run_prior(index, "auto", tmp_path, monkeypatch)

    assert (result.source, result.path) == ("generate", str(tmp_path / PRIOR_FILE))
    assert result.details is not None and result.details["conditioning"] == "none"
    assert result.details["reason"].startswith("no usable match") and len(result.details["stale_matches"]) == 4


def test_every_mode_records_mode_source_and_settings() -> None:
    for mode in PRIOR_MODES:
        image = "/data/first.png" if mode == "user" else None
        details = decide_prior(mode, image=image, matches=MATCHES, threshold=0.3, strength=0.5).details
        assert {"mode", "source", "conditioning", "threshold", "strength", "matches", "reason"} <= set(details)
        assert details["mode"] == mode


def test_img2img_from_a_retrieved_image(tiny_prior: ImagePrior) -> None:
    init = PIL.Image.new("RGB", (200, 90), (250, 10, 10))
    preset = tiny_prior.preset

    light = tiny_prior.from_image(init, "a red barn", seed=3, strength=0.5)
    full = tiny_prior.from_image(init, "a red barn", seed=3, strength=1.0)

    assert light.size == full.size == (preset.width, preset.height)
    assert light.tobytes() == tiny_prior.from_image(init, "a red barn", seed=3, strength=0.5).tobytes()
    assert light.tobytes() != full.tobytes()


@pytest.mark.parametrize("strength", [0.0, -0.2, 1.5, math.nan, 0.01])
def test_img2img_strength_is_checked(tiny_prior: ImagePrior, strength: float) -> None:
    with pytest.raises(ValueError, match="strength") as info:
        tiny_prior.from_image(PIL.Image.new("RGB", (64, 48)), "a barn", seed=1, strength=strength)
    assert "\n" not in str(info.value)
