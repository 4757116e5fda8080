"""Prompt CSVs as users write them: every bad row rejected with its reason, the rest kept, bad files refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import PIL.Image
import pytest

from magic141.presets import get_preset
from magic141.toy_world import Caption
from magic141.utils import sha256_file
from tasks.bulk_csv import (
    COLUMNS,
    PromptCsv,
    RowDefaults,
    content_key,
    default_seed,
    read_prompt_csv,
)
from tasks.request import GenerateRequest, ModelSpec, OutputSpec, PriorSpec
from tasks.request.parts import DEFAULT_SECONDS

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "prompts.csv"
# A batch with a retrieval index (checked once per batch, so rows take it as it is).
INDEXED = PriorSpec(index_dir="index")


def write_csv(folder: Path, text: str, name: str = "prompts.csv", encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "first.png"
    PIL.Image.new("RGB", (40, 30), (10, 200, 30)).save(path)
    return path


def test_example_file_has_good_rows_and_one_rejected() -> None:
    parsed = read_prompt_csv(EXAMPLE, defaults=RowDefaults(ModelSpec("toy"), INDEXED))

    assert [row.row_key for row in parsed.valid] == ["retrieved", "generated", "user-image", "long"]
    assert [row.prior.mode for row in parsed.valid] == ["retrieve", "generate", "user", "auto"]
    assert {row.render.fps for row in parsed.valid} == {8}, "an empty fps is the preset's"
    user = parsed.valid[2]
    assert user.prior.image == str(EXAMPLE.parent / "yellow-triangle.png")
    assert user.image_sha256 == sha256_file(EXAMPLE.parent / "yellow-triangle.png")
    assert all(Caption.parse(row.prompt.text) for row in parsed.valid), "the prompts speak the toy world's language"
    assert [(row.row_number, row.row_key) for row in parsed.rejected] == [(6, "too-long")]
    assert "seconds must be at most 600" in parsed.rejected[0].reason
    assert parsed.sha256 == sha256_file(EXAMPLE) and parsed.path == str(EXAMPLE)
    assert set(parsed.columns) == set(COLUMNS) and parsed.unknown_columns == ()


def test_a_quoted_cell_may_span_lines_and_stays_one_row(tmp_path: Path) -> None:
    parsed = read_prompt_csv(write_csv(tmp_path, 'id,prompt\nboat,"a paper boat,\nlit by neon signs"\ncat,a cat\n'))

    assert [row.prompt.text for row in parsed.valid] == ["a paper boat,\nlit by neon signs", "a cat"]
    assert [row.row_number for row in parsed.valid] == [2, 3], "a multi-line cell is one spreadsheet row"


def test_defaults_fill_empty_cells(tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path, "prompt,seconds,fps,prior,windows\na cat,,,,\n")
    parsed = read_prompt_csv(csv_file)

    (row,) = parsed.valid
    render = row.render
    assert (render.seconds, render.fps, row.prior.mode, render.windows) == (DEFAULT_SECONDS, 24, "auto", "chained")
    toy = read_prompt_csv(csv_file, defaults=RowDefaults(ModelSpec("toy"))).valid[0].render
    assert toy.fps == 8  # the frame rate the toy model was trained at
    assert render.guidance == get_preset("tiny").guidance_scale  # tiny's fps and guidance
    assert row.prompt.negative is None and row.prior.image is None
    assert render.seed == default_seed(row.row_key) and 0 <= render.seed < 2**31
    assert row.row_key.startswith("row-") and len(row.row_key) == 20


def test_bom_crlf_quotes_and_blank_rows(tmp_path: Path) -> None:
    text = (
        "\r\nid,Prompt ,Seconds\r\n"
        "a,\"a fox, in snow\",1\r\n"
        "\r\n"
        ",,\r\n"
        "b,\"line one\r\nline \"\"two\"\"\",2\r\n"
        "   \r\n"
        "c,plain,3"
    )
    with_bom = read_prompt_csv(write_csv(tmp_path, "\ufeff" + text, "bom.csv"))
    plain = read_prompt_csv(write_csv(tmp_path, text.replace("\r\n", "\n"), "plain.csv"))

    assert with_bom.rejected == plain.rejected == ()
    assert with_bom.valid == plain.valid
    assert [(r.row_number, r.row_key, r.prompt.text, r.render.seconds) for r in plain.valid] == [
        (3, "a", "a fox, in snow", 1.0),
        (6, "b", 'line one\nline "two"', 2.0),
        (8, "c", "plain", 3.0),
    ]


# Rows that must be rejected: cells after the prompt column, and a piece of the reason.
BAD_ROWS = {
    "empty prompt": ('"",2', "prompt is empty"),
    "blank prompt": ('"   ",2', "prompt is empty"),
    "seconds nan": ("cat,nan", "seconds 'nan' is not a number"),
    "seconds inf": ("cat,inf", "seconds 'inf' is not a number"),
    "seconds overflows": ("cat,1e999", "seconds '1e999' is out of range"),
    "seconds with unit": ("cat,5s", "seconds '5s' is not a number"),
    "seconds with underscore": ("cat,1_0", "seconds '1_0' is not a number"),
    "seconds zero": ("cat,0", "seconds must be > 0"),
    "seconds negative": ("cat,-1", "seconds must be > 0"),
    "seconds too long": ("cat,601", "seconds must be at most 600"),
    "less than a frame": ("cat,0.01,24", "less than one frame"),
    "fps fraction": ("cat,1,24.5", "fps '24.5' is not a whole number"),
    "fps zero": ("cat,1,0", "fps must be between 1 and 120"),
    "fps too high": ("cat,1,121", "fps must be between 1 and 120"),
    "seed negative": ("cat,1,24,-1", "seed must be between 0 and 2**63-1"),
    "seed too big": (f"cat,1,24,{2**63}", "seed must be between 0 and 2**63-1"),
    "seed not a number": ("cat,1,24,abc", "seed 'abc' is not a whole number"),
    "guidance negative": ("cat,1,24,1,-0.5", "guidance must be a number >= 0"),
    "guidance nan": ("cat,1,24,1,NaN", "guidance 'NaN' is not a number"),
    "unknown prior": ("cat,1,24,1,,camera", "prior 'camera' is not one of auto, user, retrieve, generate"),
    "unknown windows": ("cat,1,24,1,,,sliding", "windows 'sliding' is not one of chained, parallel"),
    "user prior without image": ("cat,1,24,1,,user", "prior 'user' needs an image"),
    "image with generate": ("cat,1,24,1,,generate,,first.png", "prior 'generate' would ignore it"),
    "image with retrieve": ("cat,1,24,1,,retrieve,,first.png", "prior 'retrieve' would ignore it"),
    "retrieve without an index": ("cat,1,24,1,,retrieve", "prior 'retrieve' needs a retrieval index and none is "
                                  "configured; pass --index-dir DIR (or set MAGIC141_INDEX_DIR)"),
    "missing image": ("cat,1,24,1,,,,nope.png", "does not exist"),
    "image not an image": ("cat,1,24,1,,,,notes.png", "is not a readable image"),
    "image outside the folder": ("cat,1,24,1,,,,../outside.png", "outside the image folders"),
    "image symlink escaping": ("cat,1,24,1,,,,link.png", "outside the image folders"),
    "unknown column holds a value": ("cat,1,24,1,,,,,red", "unknown column(s) 'colour'"),
    "more cells than columns": ("cat,1,24,1,,,,,,extra", "row has 10 cells but the header names 9 columns"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_is_rejected_and_the_rest_go_on(case: str, tmp_path: Path, picture: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(picture, folder / "first.png")
    (folder / "notes.png").write_text("not an image")
    shutil.copy(picture, tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    cells, reason = BAD_ROWS[case]
    path = write_csv(
        folder,
        "prompt,seconds,fps,seed,guidance,prior,windows,image,colour\n"
        "a good row before,1\n"
        f"{cells}\n"
        "a good row after,1\n",
    )

    parsed = read_prompt_csv(path)

    assert [row.row_number for row in parsed.valid] == [2, 4]
    (rejected,) = parsed.rejected
    assert rejected.row_number == 3 and reason in rejected.reason, rejected.reason
    assert "\n" not in rejected.reason
    assert rejected.cells["prompt"] == cells.split(",")[0].strip('"').strip()


def test_rows_that_may_need_text_to_image_are_rejected_when_the_weights_have_none(tmp_path: Path) -> None:
    PIL.Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "first.png")
    path = write_csv(tmp_path, "id,prompt,prior,image\n"
                               "made,a red fox,generate,\nchosen,a blue boat,auto,\nplain,a cat,,\n"
                               "given,a wall,,first.png\nmine,a wall,user,first.png\nfound,a fox,retrieve,\n")

    from magic141.components import build_i2v_components
    from magic141.weights import save_i2v_components

    weights = save_i2v_components(build_i2v_components(get_preset("tiny")), tmp_path / "weights")  # no prior/
    parsed = read_prompt_csv(path, defaults=RowDefaults(ModelSpec("tiny", str(weights)), INDEXED))

    assert [row.row_key for row in parsed.valid] == ["given", "mine", "found"]
    reasons = {row.row_key: row.reason for row in parsed.rejected}
    assert list(reasons) == ["made", "chosen", "plain"]
    assert reasons["made"].startswith("prior 'generate' may make the first frame with the text-to-image model")
    assert all("add a prior/ folder to the weights" in reason and "\n" not in reason for reason in reasons.values())


def test_retrieve_rows_need_an_index_and_auto_rows_do_not(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "id,prompt,prior\nfound,a red fox,retrieve\nchosen,a blue boat,auto\nplain,a cat,\n")

    without = read_prompt_csv(path)
    with_index = read_prompt_csv(path, defaults=RowDefaults(prior=INDEXED))

    assert [row.row_key for row in without.valid] == ["chosen", "plain"], "auto falls back to text-to-image"
    (rejected,) = without.rejected
    assert rejected.row_key == "found" and rejected.reason.startswith("prior 'retrieve' needs a retrieval index")
    assert "--index-dir" in rejected.reason and "\n" not in rejected.reason
    assert [(row.row_key, row.prior.mode) for row in with_index.valid] == [
        ("found", "retrieve"), ("chosen", "auto"), ("plain", "auto")]
    assert with_index.rejected == ()


def test_every_problem_of_a_row_is_named(tmp_path: Path) -> None:
    parsed = read_prompt_csv(write_csv(tmp_path, "prompt,seconds,fps,prior\n,abc,0,camera\n"))

    (rejected,) = parsed.rejected
    for piece in ("prompt is empty", "seconds 'abc'", "fps must be between", "prior 'camera'"):
        assert piece in rejected.reason
    assert rejected.reason.count(";") >= 3


def test_duplicate_ids_and_repeated_rows(tmp_path: Path) -> None:
    parsed = read_prompt_csv(
        write_csv(
            tmp_path,
            "id,prompt,seed\n"
            "a,first,1\n"
            "a,second,2\n"
            ",same,3\n"
            ",same,3\n"
            ",same,4\n"
            "a,third,5\n",
        )
    )

    assert [(row.row_number, row.row_key) for row in parsed.valid] == [
        (2, "a"), (4, parsed.valid[1].row_key), (6, parsed.valid[2].row_key),
    ]
    reasons = {row.row_number: row.reason for row in parsed.rejected}
    assert set(reasons) == {3, 5, 7}
    assert "duplicate id 'a': row 2 already uses it" in reasons[3] and "row 2" in reasons[7]
    assert "same cells as row 4" in reasons[5]


def test_unknown_column_left_empty_is_harmless(tmp_path: Path) -> None:
    parsed = read_prompt_csv(write_csv(tmp_path, "prompt,notes,,\na cat,,,\na dog,walk it,,\n"))

    assert [row.prompt.text for row in parsed.valid] == ["a cat"]
    assert parsed.unknown_columns == ("notes",)
    assert "unknown column(s) 'notes'" in parsed.rejected[0].reason


def test_images_resolve_from_the_csv_folder_not_the_working_folder(
    tmp_path: Path, picture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "batch"
    (folder / "images").mkdir(parents=True)
    shutil.copy(picture, folder / "images" / "a.png")
    path = write_csv(folder, "prompt,image,prior\na cat,images/a.png,\na dog,images/a.png,USER\n")
    monkeypatch.chdir(tmp_path)

    parsed = read_prompt_csv(Path("batch") / "prompts.csv")

    assert parsed.path == str(path)
    assert [(row.prior.mode, row.prior.image) for row in parsed.valid] == [("user", str(folder / "images" / "a.png"))] * 2
    assert parsed.valid[0].image_sha256 == sha256_file(picture)


def test_configured_image_roots_replace_the_csv_folder(tmp_path: Path, picture: Path) -> None:
    csv_dir, library = tmp_path / "csvs", tmp_path / "library"
    csv_dir.mkdir()
    library.mkdir()
    shutil.copy(picture, library / "a.png")
    shutil.copy(picture, csv_dir / "b.png")
    path = write_csv(csv_dir, f"prompt,image\nfrom the library,{library / 'a.png'}\nbeside the csv,b.png\n")

    parsed = read_prompt_csv(path, image_roots=[library])

    assert [row.prompt.text for row in parsed.valid] == ["from the library"]
    assert "outside the image folders" in parsed.rejected[0].reason


def test_keys_and_default_seeds_do_not_depend_on_row_order(tmp_path: Path) -> None:
    rows = ["a fox,1", "a boat,2", "a wall,1"]
    forward = read_prompt_csv(write_csv(tmp_path, "prompt,seconds\n" + "\n".join(rows), "a.csv"))
    backward = read_prompt_csv(write_csv(tmp_path, "prompt,seconds\n\n\n" + "\n".join(rows[::-1]), "b.csv"))

    def by_prompt(parsed: PromptCsv) -> dict[str, tuple[str, int]]:
        return {row.prompt.text: (row.row_key, row.render.seed) for row in parsed.valid}

    assert by_prompt(forward) == by_prompt(backward)
    assert len({key for key, _ in by_prompt(forward).values()}) == 3
    assert len({seed for _, seed in by_prompt(forward).values()}) == 3


REFUSED_FILES = {
    "empty": (b"", "is empty"),
    "only blank lines": (b"\n\r\n  \n,,\n", "is empty"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file"),
    "utf-16": ("prompt\na cat\n".encode("utf-16"), "is UTF-16 text"),
    "latin-1": ("prompt\nun caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2)"),
    "unclosed quote": (b'prompt,seconds\n"a cat,1\nb,2\n', "is not valid CSV on line 3"),
    "text after a quote": (b'prompt,seconds\n"a cat"x,1\n', "is not valid CSV on line 2"),
    "no prompt column": (b"text,seconds\na cat,1\n", "has no 'prompt' column (header: 'text', 'seconds')"),
    "semicolons": (b"prompt;seconds\na cat;1\n", "separated by ';' or tabs"),
    "json": (b'{"prompt": "a cat"}\n', "has no 'prompt' column"),
    "column named twice": (b"prompt,seed,Seed\na,1,2\n", "names column 'seed' twice"),
}


@pytest.mark.parametrize("case", REFUSED_FILES)
def test_unusable_file_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    data, message = REFUSED_FILES[case]
    path = tmp_path / "prompts.csv"
    path.write_bytes(data)

    with pytest.raises(ValueError) as info:
        read_prompt_csv(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("make", "message"), [(lambda p: None, "does not exist"), (lambda p: p.mkdir(), "is a folder")])
def test_missing_or_folder_path_is_refused(make, message: str, tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    make(path)
    with pytest.raises(ValueError, match=message):
        read_prompt_csv(path)


def test_valid_row_becomes_a_valid_generate_request(tmp_path: Path, picture: Path) -> None:
    parsed = read_prompt_csv(
        write_csv(tmp_path, "prompt,image,seconds,fps,seed,windows\na cat,first.png,1,8,3,\na dog,,2,8,,parallel\n")
    )
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    requests = [
        GenerateRequest(row.prompt, ModelSpec("tiny"), row.render, row.prior,
                        OutputSpec(str(tmp_path / f"{row.row_number}.mp4"), catalog))
        for row in parsed.valid
    ]

    assert [(r.prompt.text, r.prior.image, r.render.num_frames, r.render.seed, r.render.windows) for r in requests] == [
        ("a cat", str(tmp_path / "first.png"), 8, 3, "chained"),
        ("a dog", None, 16, parsed.valid[1].render.seed, "parallel"),
    ]


KEY_INPUTS = dict(
    prompt="a fox", negative_prompt=None, seconds=5.0, fps=24, seed=1, guidance=6.0, steps=4, windows="chained",
    prior="auto", image_sha256=None, preset="tiny", model_fingerprint="f" * 64,
)


def test_content_key_is_pinned_and_canonical() -> None:
    key = content_key(**KEY_INPUTS)

    # Changing this value re-renders every catalogued video: bump CONTENT_KEY_VERSION deliberately instead.
    assert key == "b2d7bd60d7db38d4d07633ed25f3c827ca68b4230476be87adf42df46d9f6190"
    assert content_key(**{**KEY_INPUTS, "seconds": 5, "guidance": 6, "negative_prompt": ""}) == key


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("prompt", "a fox "), ("negative_prompt", "blurry"), ("seconds", 5.5), ("fps", 25), ("seed", 2),
        ("guidance", 6.5), ("steps", 8), ("windows", "parallel"), ("prior", "generate"),
        ("image_sha256", "0" * 64), ("preset", "full-540p"), ("model_fingerprint", "e" * 64),
        ("prior_settings", {"threshold": 0.3, "strength": 0.6}),
    ],
)
def test_content_key_changes_with_every_input(name: str, value: object) -> None:
    assert content_key(**{**KEY_INPUTS, name: value}) != content_key(**KEY_INPUTS)



def _png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_hostile_images_reject_their_rows_with_the_file_named_and_the_rest_go_on(tmp_path: Path, picture: Path):
    (tmp_path / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    (tmp_path / "large.png").write_bytes(_png_header(9_000, 9_000))
    (tmp_path / "truncated.png").write_bytes(_png_header(64, 48)[:40])
    os.mkfifo(tmp_path / "fifo.png")
    path = write_csv(tmp_path, "id,prompt,image\nbomb,a,bomb.png\nlarge,a,large.png\ntruncated,a,truncated.png\n"
                               f"fifo,a,fifo.png\ndevice,a,/dev/zero\ngood,a,{picture.name}\n")
    table = read_prompt_csv(path, [tmp_path, "/dev"])
    reasons = {row.row_key: row.reason for row in table.rejected}
    assert [row.row_key for row in table.valid] == ["good"]
    assert "bomb.png" in reasons["bomb"] and "too large to decode" in reasons["bomb"]
    assert reasons["large"] == (f"image {str(tmp_path / 'large.png')!r} is 9000x9000 (81,000,000 pixels), over the "
                                f"limit of 64,000,000 (MAGIC141_MAX_IMAGE_PIXELS); give a smaller image")
    assert "truncated.png" in reasons["truncated"] and "not a readable image" in reasons["truncated"]
    assert "fifo.png" in reasons["fifo"] and "is not a file" in reasons["fifo"]
    assert "/dev/zero" in reasons["device"] and "is not a file" in reasons["device"]


def test_the_pixel_limit_is_a_setting(tmp_path: Path, picture: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAGIC141_MAX_IMAGE_PIXELS", "100")
    path = write_csv(tmp_path, f"prompt,image\na,{picture.name}\n")
    [row] = read_prompt_csv(path).rejected
    assert "over the limit of 100 (MAGIC141_MAX_IMAGE_PIXELS)" in row.reason


def test_a_long_cell_rejects_its_row_and_names_the_limit(tmp_path: Path):
    long_prompt = "x" * 1_048_576
    path = write_csv(tmp_path, f'id,prompt,negative_prompt\nlong,"{long_prompt}",\njust,{"y" * 10_001},\n'
                               f'negative,a,{"n" * 10_001}\nfine,{"z" * 10_000},\n')
    table = read_prompt_csv(path)
    reasons = {row.row_key: row.reason for row in table.rejected}
    assert reasons == {
        "long": "prompt is 1,048,576 characters; at most 10,000; shorten it",
        "just": "prompt is 10,001 characters; at most 10,000; shorten it",
        "negative": "negative_prompt is 10,001 characters; at most 10,000",
    }
    assert [row.row_key for row in table.valid] == ["fine"]


def test_prompts_lose_escape_sequences_and_must_keep_some_text(tmp_path: Path):
    path = write_csv(tmp_path, 'id,prompt\nnoise,"\x01\x02\x1b[31m\x1b]0;title\x07\x1b[0m"\n'
                               'styled,"a \x1b[1mbold\x1b[0m dog\u202e on grass"\n')
    table = read_prompt_csv(path)
    [rejected] = table.rejected
    assert rejected.row_key == "noise"
    assert rejected.reason.startswith("prompt has no printable text (only control characters or escape sequences)")
    [valid] = table.valid
    assert valid.prompt.text == "a bold dog on grass"


def test_generate_cleans_its_prompt_and_checks_its_length(tmp_path: Path):
    out = str(tmp_path / "v.mp4")
    catalog = f"sqlite:///{tmp_path / 'c.db'}"
    checked = GenerateRequest.from_options("a \x1b[31mred\x1b[0m kite", out, catalog)
    assert checked.prompt.text == "a red kite"
    with pytest.raises(ValueError, match=r"^prompt is 10,001 characters; at most 10,000; shorten it$"):
        GenerateRequest.from_options("k" * 10_001, out, catalog)
    with pytest.raises(ValueError, match=r"^prompt has no printable text"):
        GenerateRequest.from_options("\x1b[2J\x07", out, catalog)


def test_a_file_is_parsed_once_per_process_until_its_content_changes(tmp_path: Path) -> None:
    """The CLI reads a CSV before starting the flow, and the flow's read takes that reading."""
    path = write_csv(tmp_path, "prompt\na cat\n")
    first = read_prompt_csv(path)
    assert read_prompt_csv(path) is first
    assert read_prompt_csv(path, defaults=RowDefaults(ModelSpec("toy"))) is not first, "other settings, other rows"
    path.write_text("prompt\na dog\n")  # the same size, maybe the same modification time
    assert [row.prompt.text for row in read_prompt_csv(path).valid] == ["a dog"]
