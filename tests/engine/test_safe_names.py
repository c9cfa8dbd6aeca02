"""Path-safe names: engine.fsutil.safe_name, safe_child, predict output names,
and the pixel limit / model-card size checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.errors import CheckpointError, ReadError
from engine.fsutil import MAX_NAME_LEN, safe_child, safe_name


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
@example("0\n")  # a trailing newline once passed a "^...$" pattern unchanged
@example("report.PNG\n")
def test_safe_name_is_always_a_plain_file_name(name: str) -> None:
    out = safe_name(name)
    assert out and len(out) <= MAX_NAME_LEN
    assert "/" not in out and "\\" not in out and "\x00" not in out and ".." not in out
    assert not out.startswith(".") and not os.path.isabs(out) and out.isascii() and out.isprintable()
    assert out.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    assert safe_name(out) == out  # idempotent: a safe name is kept as it is
    assert safe_name(name) == out  # stable


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_safe_name_never_merges_two_names(a: str, b: str) -> None:
    if a != b:
        assert safe_name(a) != safe_name(b)


def test_safe_name_examples(tmp_path: Path) -> None:
    assert safe_name("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"  # SOPInstanceUIDs unchanged
    assert safe_name("2_13") == "2_13"
    for bad in ("../../../etc/passwd", "/etc/passwd", "..", ".", "", "a\x00b", "a\nb", "CON", "nul.png",
                "x" * 400, "train/0", "C:\\Windows\\x"):
        out = safe_name(bad)
        assert out != bad and "-" in out
        p = safe_child(tmp_path, bad, ".png")
        assert p.parent == tmp_path and p.name == out + ".png"


def test_predict_output_names_are_distinct(tmp_path: Path) -> None:
    from engine.cli.models import output_names

    files = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "a.bmp", tmp_path / "sub" / "a.png",
             tmp_path / "b.png", tmp_path / "x" / "../evil.png"]
    names = output_names(files)
    assert [names[f] for f in files[:5]] == ["a_jpg", "a_png", "a_bmp", "sub_a_png", "b"]
    assert len(set(names.values())) == len(files)
    assert all(n == safe_name(n) for n in names.values())


def test_pixel_limit_setting_and_cli(tmp_path: Path, monkeypatch, capsys) -> None:
    from engine.__main__ import main
    from engine.io import image_size, load_image
    from engine.io.limits import DEFAULT_MAX_PIXELS, ENV_VAR, max_pixels, set_max_pixels
    from tests.support import badinput as B

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == 100_000_000
    p = B.png(tmp_path / "img.png", B.gradient(40, 50))
    monkeypatch.setenv(ENV_VAR, "1000")
    with pytest.raises(ReadError, match="limit of 1,000") as exc:
        image_size(p)
    assert "img.png" in str(exc.value) and "--max-pixels" in str(exc.value)
    with pytest.raises(ReadError, match="limit"):
        load_image(p)
    set_max_pixels(5000)
    try:
        assert load_image(p)[0].shape == (1, 40, 50)  # the explicit setting wins over the environment
    finally:
        set_max_pixels(None)
    monkeypatch.setenv(ENV_VAR, "zero")
    with pytest.raises(Exception, match=ENV_VAR):
        max_pixels()
    monkeypatch.delenv(ENV_VAR)
    # CLI: info lists the image as a bad file naming the limit; --max-pixels raises it
    d = tmp_path / "ds"
    B.png(d / "images" / "a.png", B.gradient(40, 50))
    B.png(d / "masks" / "a.png", B.disk_mask(40, 50, 5))
    ws = tmp_path / "ws"
    try:
        assert main(["--workspace", str(ws), "info", str(d), "--max-pixels", "1000",
                     "--json", str(tmp_path / "i.json")]) == 0
        info = json.loads((tmp_path / "i.json").read_text())
        assert info["n_cases"] == 0 and "limit" in info["bad_files"][0]["reason"]
        assert main(["--workspace", str(ws), "info", str(d), "--max-pixels", "3000",
                     "--json", str(tmp_path / "j.json")]) == 0
        assert json.loads((tmp_path / "j.json").read_text())["n_cases"] == 1
    finally:
        set_max_pixels(None)
        os.environ.pop(ENV_VAR, None)


def test_absurd_model_card_is_refused_before_building(tmp_path: Path) -> None:
    from engine.checkpoint import check_card_sizes, read_card

    src = Path(__file__).resolve().parents[2] / "weights" / "demo-nerve-phantom" / "card.json"
    if not src.exists():
        pytest.skip("shipped demo card not present")
    card = json.loads(src.read_text())
    check_card_sizes(card)  # the shipped card is fine
    for patch, field in (({"spec": {**card["spec"], "base_channels": 512}}, "base_channels"),
                         ({"preprocess": {**card["preprocess"], "size": [40000, 40000]}}, "preprocess.size"),
                         ({"tile": [40000, 40000]}, "tile"),
                         ({"spec": {**card["spec"], "num_classes": 10**9}}, "num_classes")):
        folder = tmp_path / field
        folder.mkdir()
        (folder / "card.json").write_text(json.dumps({**card, **patch}))
        with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
            read_card(folder)


def test_palette_mask_png_keeps_values(tmp_path: Path) -> None:
    from PIL import Image

    from engine.io import read_mask, write_mask_png

    m = np.zeros((6, 7), np.uint8)
    m[1:3, 2:5] = 1
    m[4, :] = 2
    write_mask_png(tmp_path / "m.png", m, palette=True)
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "P" and (np.asarray(im) == m).all()
    labels, info = read_mask(tmp_path / "m.png")
    assert info["encoding"] == "palette" and (labels == m).all()


@pytest.mark.parametrize("name", ["ada\n", "ada\r\n", "my-unet\n"])
def test_names_with_a_trailing_newline_are_refused_everywhere(name: str) -> None:
    """User names, training run names and file-name stems never accept a trailing newline."""
    from engine.store.users import _USER_NAME
    from engine.training.config import _NAME_RE

    assert not _USER_NAME.match(name) and not _NAME_RE.match(name)
    assert safe_name(name) != name and "\n" not in safe_name(name)
