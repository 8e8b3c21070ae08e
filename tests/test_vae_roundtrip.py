"""tools/vae_roundtrip.py: the VAE's round trip alone, per bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadc_fixtures import textured_image

ROOT = Path(__file__).resolve().parents[1]


def test_pictures_are_spread_over_the_sorted_folder(tmp_path: Path, load_tool) -> None:
    for i in range(10):
        (tmp_path / f"{i:02d}.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a picture")
    tool = load_tool("vae_roundtrip")
    assert [p.name for p in tool.pictures(tmp_path, 3)] == ["00.png", "03.png", "06.png"]
    assert len(tool.pictures(tmp_path, 50)) == 10


def test_round_trip_figures_per_bundle(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    from gateway.codec.cadc.bundle import create_bundle, load_model

    bundle = create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "bundle")
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):  # odd sides: the tool crops to multiples of 8
        Image.fromarray(textured_image(69, 83, seed=seed)).save(images / f"{seed}.png")
    tool = load_tool("vae_roundtrip")
    assert tool.main([str(bundle), "--images", str(images), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 pictures from" in out
    row = next(line for line in out.splitlines() if line.startswith(str(bundle)))
    psnr, ms_ssim, delta_e = (float(v) for v in row.split()[1:4])
    assert 0 < psnr < 60 and 0 < ms_ssim <= 1 and delta_e >= 0
    a = textured_image(64, 72, seed=5)
    b = tool.round_trip(load_model(bundle), a)
    assert b.shape == a.shape and b.dtype == np.uint8


def test_an_empty_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    assert load_tool("vae_roundtrip").main(["unused", "--images", str(tmp_path)]) == 2
    assert "no pictures" in capsys.readouterr().err
