"""The prior policy (paper Eq. 1-3): each mode's choice, the recorded details, and clear refusals."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import pytest

from magic141.prior import ImagePrior
from tasks.prior_policy import PRIOR_MODES, decide_prior


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
