"""``satgw encode`` / ``satgw decode`` through the console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from gateway.cli import main
from gateway.codec import bitstream


@pytest.fixture()
def photo_png(tmp_path: Path) -> Path:
    path = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).resize((192, 192)).save(path)
    return path


def test_encode_decode_round_trip(photo_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sgw, png = tmp_path / "out.sgw", tmp_path / "back.png"
    assert main(["encode", str(photo_png), "--packets", "2", "--codec", "webp", "-o", str(sgw)]) == 0
    text = capsys.readouterr().out
    assert "codec webp (asked for)" in text and "of 864 B" in text and "candidates" in text
    data = sgw.read_bytes()
    assert len(data) <= 864 and bitstream.unpack(data)[0].codec_name == "webp"

    assert main(["decode", str(sgw), "-o", str(png)]) == 0
    assert "webp, 192x192" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.size == (192, 192) and im.mode == "RGB"


def test_encode_json_output(photo_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sgw = tmp_path / "x.sgw"
    argv = ["encode", str(photo_png), "-n", "3", "--codec", "jpeg", "--parity", "1", "-o", str(sgw), "--json"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"] == "jpeg" and info["budget_frames"] == 3 and info["parity"] == 1
    assert info["bytes"] == sgw.stat().st_size <= info["budget_bytes"] == 2 * 432


def test_default_codec_is_reported(photo_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encode", str(photo_png), "-n", "2", "-o", str(tmp_path / "d.sgw")]) == 0
    out = capsys.readouterr().out
    assert "codec cadc (default" in out or "codec avif (default fallback" in out


def test_budget_too_small_exits_3_with_frames_needed(photo_png: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["encode", str(photo_png), "-n", "1", "--codec", "jpeg", "--frame-size", "120"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "astronaut.png needs at least" in err and "frames of 120 B with jpeg; budget was 1" in err
    assert len(err.strip().splitlines()) == 1


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encode", str(tmp_path / "missing.png"), "-n", "2", "--codec", "jpeg"]) == 1
    assert "cannot read image" in capsys.readouterr().err
    bad = tmp_path / "bad.sgw"
    bad.write_bytes(b"\x12" + bytes(20))
    assert main(["decode", str(bad), "-o", str(tmp_path / "bad.png")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bad.sgw" in err
    assert not (tmp_path / "bad.png").exists()


def test_decode_default_output_name(tmp_path: Path) -> None:
    img = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(img)
    assert main(["encode", str(img), "-n", "1", "--codec", "jxl"]) == 0
    assert main(["decode", str(tmp_path / "small.sgw")]) == 0
    with Image.open(tmp_path / "small.png") as im:
        assert im.size == (30, 20)


def test_decode_partial_makes_a_preview_of_a_cut_cadc_stream(photo_png: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.codec.cadc.bundle import create_bundle
    from gateway.codec.cadc.layer_table import split_payload

    bundle = create_bundle(Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml",
                           tmp_path / "bundle")
    sgw = tmp_path / "a.sgw"
    assert main(["encode", str(photo_png), "-n", "2", "--codec", "cadc", "--bundle", str(bundle), "-o", str(sgw)]) == 0
    data = sgw.read_bytes()
    table, _, offset = split_payload(data[bitstream.HEADER_SIZE:], data[0] >> 4)
    cut = tmp_path / "cut.sgw"
    cut.write_bytes(data[: bitstream.HEADER_SIZE + offset + table.ends()[0]])  # header, table and ẑ only
    capsys.readouterr()
    assert main(["decode", str(cut), "--bundle", str(bundle), "-o", str(tmp_path / "no.png")]) != 0
    assert "truncated" in capsys.readouterr().err
    png = tmp_path / "preview.png"
    assert main(["decode", str(cut), "--partial", "--bundle", str(bundle), "-o", str(png)]) == 0
    assert "preview: 1 of 5 layers" in capsys.readouterr().out
    assert np.asarray(Image.open(png)).shape == (192, 192, 3)
