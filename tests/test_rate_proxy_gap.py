"""tools/rate_proxy_gap.py: the training rate proxy against the bits of the rounded symbols."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cadc_fixtures import textured_image

ROOT = Path(__file__).resolve().parents[1]


def test_proxy_and_rounded_bits_per_lambda(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    from gateway.codec.cadc.bundle import create_bundle

    bundle = create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "bundle")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(textured_image(130, 140, seed=1)).save(images / "a.png")  # cropped to 128x128
    Image.fromarray(textured_image(60, 60, seed=2)).save(images / "b.png")  # too small: left out
    tool = load_tool("rate_proxy_gap")
    assert tool.main([str(bundle), "--images", str(images), "--lams", "4,64", "--draws", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 pictures from")
    rows = [line.split(" | ") for line in out.splitlines() if line[:1].isdigit() and " | " in line]
    assert [r[0] for r in rows] == ["4", "64"]
    for _, proxy, rounded, ratio in rows:
        assert float(proxy) > 0 and float(rounded) > 0
        assert float(ratio) == pytest.approx(float(rounded) / float(proxy), rel=0.01, abs=0.002)


def test_a_folder_without_usable_pictures_is_refused(tmp_path: Path, load_tool) -> None:
    Image.fromarray(textured_image(60, 60, seed=2)).save(tmp_path / "small.png")
    assert load_tool("rate_proxy_gap").main(["unused", "--images", str(tmp_path)]) == 2
