"""Tests for tasks.runtime.ffmpeg: encoding, probing, crossfades and checksums."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks.runtime.ffmpeg as ff
from magic141.utils import sha256_file
from tasks.runtime.ffmpeg import EncodeError, ProbeError, VideoInfo, VideoWriter, crossfade, probe

W, H = 64, 48


def _frames(n: int, seed: int = 0, width: int = W, height: int = H) -> np.ndarray:
    """Deterministic smooth-ish RGB frames."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, height // 8, width // 8, 3), dtype=np.uint8)
    return base.repeat(8, axis=1).repeat(8, axis=2)


def _encode(path: Path, frames: np.ndarray, fps: int = 24, **kwargs: object) -> Path:
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps, preset="veryfast", **kwargs) as w:
        w.write(frames)
    return path


def _decode(path: Path, width: int, height: int) -> np.ndarray:
    """Decode a video back to RGB frames with ffmpeg."""
    out = subprocess.run(
        [ff.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path),
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("n", "fps"), [(120, 24), (1, 24), (121, 30), (7, 8)])
def test_frame_count_fps_codec_and_size(tmp_path: Path, n: int, fps: int) -> None:
    out = _encode(tmp_path / "clip.mp4", _frames(n), fps=fps)
    info = probe(out)
    assert info.frames == n
    assert info.fps == fps
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.width, info.height) == (W, H)
    assert info.duration_s == pytest.approx(n / fps, abs=0.02)
    assert _leftovers(tmp_path) == ["clip.mp4"]


def test_frames_written_counts_single_frames_and_batches(tmp_path: Path) -> None:
    frames = _frames(10)
    dest = tmp_path / "mixed.mp4"
    with VideoWriter(dest, W, H, 24, preset="veryfast", expected_frames=10) as w:
        w.write(frames[0])
        w.write(frames[1:4])
        w.write(frames[4:4])
        for frame in frames[4:]:
            w.write(frame)
        assert w.frames_written == 10
        assert not dest.exists()
    assert probe(dest).frames == 10


def test_identical_input_gives_byte_identical_output(tmp_path: Path) -> None:
    frames = _frames(30, seed=3)
    a = _encode(tmp_path / "a.mp4", frames)
    b = _encode(tmp_path / "b.mp4", frames)
    assert a.read_bytes() == b.read_bytes()
    assert sha256_file(a) == sha256_file(b)


def test_solid_colours_survive_round_trip(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 30, 60), (128, 128, 128), (255, 255, 255)]
    frames = np.stack([np.full((H, W, 3), c, np.uint8) for c in colours])
    out = _encode(tmp_path / "solid.mp4", frames, fps=6)
    decoded = _decode(out, W, H)
    assert decoded.shape == frames.shape
    for got, want in zip(decoded, frames):
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).mean() < 3


def test_moviepy_reads_the_output(tmp_path: Path) -> None:
    moviepy = pytest.importorskip("moviepy")
    frames = np.full((12, H, W, 3), (40, 180, 90), np.uint8)
    out = _encode(tmp_path / "mp.mp4", frames, fps=12)
    clip = moviepy.VideoFileClip(str(out))
    try:
        assert tuple(clip.size) == (W, H)
        assert clip.fps == 12
        first = clip.get_frame(0)
    finally:
        clip.close()
    assert np.abs(first.astype(np.int16) - frames[0].astype(np.int16)).mean() < 3


def test_exception_in_block_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "boom.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(dest, W, H, 24, preset="veryfast") as w:
            w.write(_frames(5))
            assert len(_leftovers(tmp_path)) == 1
            assert _leftovers(tmp_path)[0].endswith(".tmp.mp4")
            raise KeyError("generator crashed")
    assert _leftovers(tmp_path) == []


def test_exception_does_not_overwrite_existing_destination(tmp_path: Path) -> None:
    dest = _encode(tmp_path / "keep.mp4", _frames(4))
    before = dest.read_bytes()
    with pytest.raises(RuntimeError):
        with VideoWriter(dest, W, H, 24, preset="veryfast") as w:
            w.write(_frames(9, seed=1))
            raise RuntimeError("stop")
    assert dest.read_bytes() == before
    assert _leftovers(tmp_path) == ["keep.mp4"]


@pytest.mark.parametrize("written", [4, 6])
def test_expected_frames_mismatch_leaves_nothing(tmp_path: Path, written: int) -> None:
    dest = tmp_path / "short.mp4"
    with pytest.raises(EncodeError, match="expected 5"):
        with VideoWriter(dest, W, H, 24, preset="veryfast", expected_frames=5) as w:
            w.write(_frames(written))
    assert _leftovers(tmp_path) == []


def test_zero_frames_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EncodeError):
        with VideoWriter(tmp_path / "empty.mp4", W, H, 24):
            pass
    assert _leftovers(tmp_path) == []


def test_ffmpeg_failure_raises_one_line_encode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "sys.stdin.buffer.read()\n"
        "sys.stderr.write('some progress\\nError: encoder exploded\\n')\n"
        "sys.exit(3)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(ff, "ffmpeg_exe", lambda: str(fake))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(EncodeError) as err:
        with VideoWriter(out_dir / "x.mp4", W, H, 24) as w:
            w.write(_frames(3))
    message = str(err.value)
    assert "\n" not in message
    assert "Error: encoder exploded" in message
    assert "code 3" in message
    assert _leftovers(out_dir) == []


def test_ffmpeg_dying_mid_stream_raises_encode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('fatal: no space\\n')\nsys.exit(1)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(ff, "ffmpeg_exe", lambda: str(fake))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    big = np.zeros((64, 256, 256, 3), np.uint8)
    with pytest.raises(EncodeError, match="fatal: no space"):
        with VideoWriter(out_dir / "x.mp4", 256, 256, 24) as w:
            for _ in range(20):
                w.write(big)
    assert _leftovers(out_dir) == []


@pytest.mark.parametrize(("width", "height"), [(63, 48), (64, 47), (0, 48), (-2, 48)])
def test_bad_dimensions_raise_value_error(tmp_path: Path, width: int, height: int) -> None:
    with pytest.raises(ValueError, match="width|height"):
        VideoWriter(tmp_path / "x.mp4", width, height, 24)
    assert _leftovers(tmp_path) == []


def test_odd_width_message_mentions_even(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "x.mp4", 63, 48, 24)


@pytest.mark.parametrize(
    "kwargs", [{"fps": 0}, {"fps": 23.976}, {"crf": 60}, {"preset": "ludicrous"}, {"expected_frames": 0}]
)
def test_bad_settings_raise_value_error(tmp_path: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"fps": 24, **kwargs}
    fps = args.pop("fps")
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "x.mp4", W, H, fps, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((H, W, 3), np.float32),
        np.zeros((W, H, 3), np.uint8),
        np.zeros((H, W), np.uint8),
        np.zeros((2, H, W, 4), np.uint8),
        np.zeros((1, 1, H, W, 3), np.uint8),
    ],
)
def test_wrong_frame_shape_or_dtype_raises(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=rf"\({H}, {W}, 3\)"):
        with VideoWriter(tmp_path / "x.mp4", W, H, 24) as w:
            w.write(bad)
    assert _leftovers(tmp_path) == []


def test_write_outside_context_is_rejected(tmp_path: Path) -> None:
    w = VideoWriter(tmp_path / "x.mp4", W, H, 24)
    with pytest.raises(RuntimeError):
        w.write(_frames(1))


def test_probe_non_video_raises(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("definitely not a video\n")
    with pytest.raises(ProbeError) as err:
        probe(text)
    assert "\n" not in str(err.value)
    with pytest.raises(ProbeError):
        probe(tmp_path / "missing.mp4")


def test_probe_audio_only_raises(tmp_path: Path) -> None:
    audio = tmp_path / "tone.m4a"
    subprocess.run(
        [ff.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=0.2",
         str(audio)],
        check=True,
    )
    with pytest.raises(ProbeError):
        probe(audio)


def test_probe_returns_frozen_info(tmp_path: Path) -> None:
    info = probe(_encode(tmp_path / "f.mp4", _frames(2)))
    assert isinstance(info, VideoInfo)
    with pytest.raises(AttributeError):
        info.frames = 3  # type: ignore[misc]


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    blob = np.random.default_rng(1).integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    assert sha256_file(path) == hashlib.sha256(blob).hexdigest()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_crossfade_solid_ramp_is_exact_and_monotonic() -> None:
    n = 7
    a = np.zeros((n, 2, 2, 3), np.uint8)
    b = np.full((n, 2, 2, 3), 255, np.uint8)
    out = crossfade(a, b)
    expected = np.rint(255 * (np.arange(1, n + 1) / (n + 1))).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == a.shape
    assert np.array_equal(out[:, 0, 0, 0], expected)
    assert np.all(np.diff(out[:, 0, 0, 0].astype(int)) > 0)
    assert 0 < out[0, 0, 0, 0] < 255 // 2 < out[-1, 0, 0, 0] < 255


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_crossfade_properties(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (n, 3, 4, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (n, 3, 4, 3), dtype=np.uint8)
    out = crossfade(a, b).astype(int)
    ai, bi = a.astype(int), b.astype(int)
    assert np.all(out >= np.minimum(ai, bi)) and np.all(out <= np.maximum(ai, bi))
    w = (np.arange(1, n + 1) / (n + 1))[:, None, None, None]
    assert np.abs(out - (ai * (1 - w) + bi * w)).max() <= 0.5 + 1e-9
    # distance to b shrinks (weakly) frame by frame when a and b are constant stacks
    ca = np.broadcast_to(a[:1], a.shape)
    cb = np.broadcast_to(b[:1], b.shape)
    dist = np.abs(crossfade(ca, cb).astype(int) - cb.astype(int)).sum(axis=(1, 2, 3))
    assert np.all(np.diff(dist) <= 0)


def test_crossfade_identical_and_mismatched_inputs() -> None:
    a = _frames(3)
    assert np.array_equal(crossfade(a, a), a)
    assert crossfade(a[:0], a[:0]).shape == (0, H, W, 3)
    with pytest.raises(ValueError):
        crossfade(a, a[:2])
    with pytest.raises(ValueError):
        crossfade(a.astype(np.float32), a.astype(np.float32))
