"""README "Using real weights", step by step as a user types it, at tiny size: an official checkpoint is
converted, laid out beside the other components, quantized to int8, reported and rendered by
``magic141 generate`` on a Ray render actor that loads the folder itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from official_checkpoint import original_state_dict
from safetensors.torch import load_file
from test_cli import run_here

from magic141.convert import convert_state_dict
from magic141.pipeline import Magic141Pipeline
from magic141.presets import get_preset
from magic141.utils import sha256_file
from magic141.weights import read_prompt_format, save_i2v_components
from tasks.catalog import open_catalog
from tasks.runtime.ffmpeg import probe
from tasks.runtime.render_pool import shutdown_pools


@pytest.fixture
def downloaded(tmp_path: Path, tiny_pipeline: Magic141Pipeline) -> tuple[Path, Path]:
    """What a user has downloaded: the official transformer checkpoint and the other components' folders."""
    t, text = get_preset("tiny").transformer, get_preset("tiny").text
    official = original_state_dict(t.hidden_size, t.attention_head_dim, t.num_layers, t.num_single_layers,
                                   t.num_refiner_layers, text.llm_hidden_size, text.clip_hidden_size)
    checkpoint = tmp_path / "downloads" / "dmd_4_step_i2v.pth"
    checkpoint.parent.mkdir()
    torch.save({"module": official}, checkpoint)
    components = tmp_path / "downloads" / "hunyuan-i2v"
    save_i2v_components(tiny_pipeline.components, components)
    shutil.rmtree(components / "transformer")
    return checkpoint, components


def test_official_checkpoint_to_a_catalogued_clip(prefect_api, downloaded, prior_image, tmp_path: Path, monkeypatch,
                                                  capsys):
    checkpoint, components = downloaded
    rope = ",".join(map(str, get_preset("tiny").transformer.rope_axes_dim))

    # Step 1 and 2: lay out the folder, the converted transformer beside the other components.
    weights = tmp_path / "weights"
    shutil.copytree(components, weights)
    status, out, err = run_here(["model", "convert", "--official", str(checkpoint), "--out", str(weights / "transformer"),
                                 "--rope-axes", rope], tmp_path, monkeypatch, capsys)
    assert status == 0, err
    assert read_prompt_format(weights / "transformer") == "magic141"
    converted = load_file(weights / "transformer" / "diffusion_pytorch_model.safetensors")
    official = torch.load(checkpoint, weights_only=True)["module"]
    for key, value in convert_state_dict(official).items():
        torch.testing.assert_close(converted[key], value.to(torch.bfloat16), msg=key)

    # Step 3: pre-quantize, then report.
    status, out, err = run_here(["model", "quantize", "--weights", str(weights), "--out", str(tmp_path / "weights-int8")],
                                tmp_path, monkeypatch, capsys)
    assert status == 0, err
    reports = {}
    for folder in ("weights", "weights-int8"):
        status, out, err = run_here(["model", "report", "--weights", str(tmp_path / folder), "--json"],
                                    tmp_path, monkeypatch, capsys)
        assert status == 0, err
        reports[folder] = {c["component"]: c for c in json.loads(out)["components"]}
    bf16, int8 = reports["weights"]["transformer"], reports["weights-int8"]["transformer"]
    assert (bf16["dtype"], int8["parameters"]) == ("bfloat16", bf16["parameters"])
    assert int8["weight_bytes"] < bf16["weight_bytes"], int8

    # Step 4: generate, on one render actor that loads the int8 folder.
    image = tmp_path / "first.png"
    prior_image.save(image)
    clip = tmp_path / "fox.mp4"
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    try:
        status, out, err = run_here(
            ["generate", "--preset", "tiny", "--weights", str(tmp_path / "weights-int8"), "--image", str(image),
             "--prompt", "a red fox trotting through fresh snow", "--seconds", "1", "--fps", "12", "--seed", "3",
             "--workers", "1", "--out", str(clip), "--catalog", catalog, "--json"], tmp_path, monkeypatch, capsys)
    finally:
        shutdown_pools()
    assert status == 0, err
    info = probe(clip)
    assert (info.frames, info.fps, info.width, info.height) == (12, 12, 64, 48)
    with open_catalog(catalog) as cat:
        row = cat.get_video(json.loads(out)["id"])
        windows = cat.video_windows(row["id"])
    assert row["output_sha256"] == sha256_file(clip)
    loaded = Magic141Pipeline.from_preset("tiny", weights=tmp_path / "weights-int8")
    assert loaded.components.prompt_format == "magic141"
    assert row["weights_fingerprint"] == loaded.weights_fingerprint, "the catalogued video names the int8 weights"
    assert all(w["actor"] != "local" for w in windows), "rendered by the Ray actor"
