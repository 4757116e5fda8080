"""``magic141 model`` commands as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run, run_here


def test_report_full_size_int8_transformer_is_half_of_bf16():
    done = run("model", "report", "--preset", "full-540p", "--quantize", "int8", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    transformer = next(c for c in report["components"] if c["component"] == "transformer")
    assert 12.5e9 < transformer["parameters"] < 13.5e9
    assert transformer["weight_bytes"] == 2 * transformer["parameters"]
    assert transformer["quantized_ratio"] <= 0.52


def test_report_full_size_lists_every_component_at_its_real_size():
    done = run("model", "report", "--preset", "full-540p", "--json")
    assert done.returncode == 0, done.stderr
    sizes = {c["component"]: c for c in json.loads(done.stdout)["components"]}
    assert set(sizes) == {"transformer", "vae", "text_encoder", "text_encoder_2"}
    # LLaVA-Llama-3-8B (GQA, 128k vocabulary, CLIP ViT-L/14-336 tower), CLIP ViT-L/14 text, HunyuanVideo VAE.
    assert 8.3e9 < sizes["text_encoder"]["parameters"] < 8.4e9
    assert 122e6 < sizes["text_encoder_2"]["parameters"] < 124e6
    assert 240e6 < sizes["vae"]["parameters"] < 250e6
    assert sizes["vae"]["dtype"] == "float32"
    assert sizes["text_encoder"]["dtype"] == "bfloat16"


def test_report_probe_measures_the_quantization_error():
    done = run("model", "report", "--quantize", "int8", "--probe", "--json")
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)["probe"]
    assert 0 < probe["relative_output_error"] < 0.05


@pytest.mark.parametrize(
    "args",
    [
        ["model", "report", "--quantize", "int3"],
        ["model", "report", "--preset", "huge"],
        ["model", "report", "--preset", "full-540p", "--quantize", "int8", "--probe"],
        ["model", "convert", "--official", "{tmp}/none.pth", "--out", "{tmp}/o"],
        ["model", "convert", "--official", "{tmp}/none.pth", "--out", "{tmp}/o", "--rope-axes", "16;56;56"],
        ["model", "quantize", "--weights", "{tmp}/none", "--out", "{tmp}/q"],
    ],
)
def test_bad_model_commands_are_one_line(args: list[str], tmp_path: Path, monkeypatch, capsys):
    status, out, err = run_here(args, tmp_path, monkeypatch, capsys)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("magic141: error: ") and out == ""
    assert list(tmp_path.iterdir()) == [], "nothing is written"
