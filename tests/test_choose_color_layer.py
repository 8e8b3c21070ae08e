"""tools/choose_color_layer.py: colour-layer rows measured on training pictures, chosen per band of λ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cadc_fixtures import textured_image

ROOT = Path(__file__).resolve().parents[1]


def _rec(image: str, frames: int, layer: str, lam: float, ms: float, de: float, settings: dict | None = None) -> dict:
    return {"image": image, "frames": frames, "layer": layer, "lam": lam, "ms_ssim": ms, "delta_e": de,
            "psnr": 20.0 - de / 10, "settings": settings or {}}


def test_each_band_keeps_the_layer_with_the_best_trade_and_rows_merge(load_tool) -> None:
    tool = load_tool("choose_color_layer")
    fine, coarse = {"luma_cell": 32, "chroma_cell": 32}, {"chroma_cell": 96}
    records = [
        # λ 60 (band ≥ 50): every layer costs more MS-SSIM than its ΔE is worth -> none
        _rec("a", 1, "none", 60, 0.60, 9.0), _rec("a", 1, "C96", 70, 0.59, 8.5, coarse),
        _rec("a", 1, "L32C32", 90, 0.55, 6.0, fine),
        # λ 10 and 12 (band 8-20): the coarse layer wins on the mean
        _rec("a", 4, "none", 10, 0.80, 6.0), _rec("a", 4, "C96", 11, 0.80, 4.0, coarse),
        _rec("a", 4, "L32C32", 14, 0.78, 3.5, fine),
        _rec("b", 4, "none", 12, 0.82, 5.0), _rec("b", 4, "C96", 13, 0.82, 3.0, coarse),
        _rec("b", 4, "L32C32", 15, 0.79, 3.0, fine), _rec("b", 4, "current", 13, 0.81, 4.0, {}),
        # λ 5 and 2 (bands 4-8 and 1.5-4): the fine layer wins in both -> one merged row from 1.5
        _rec("a", 8, "none", 5, 0.85, 5.0), _rec("a", 8, "C96", 5.5, 0.85, 4.0, coarse),
        _rec("a", 8, "L32C32", 6, 0.86, 2.0, fine),
        _rec("b", 8, "none", 2, 0.88, 4.0), _rec("b", 8, "L32C32", 2.5, 0.89, 1.5, fine),
    ]
    bands = (50.0, 20.0, 8.0, 4.0, 1.5)
    chosen = tool.choose(records, bands, weight=0.005)
    assert [b["chosen"] for b in chosen] == [None, None, "C96", "L32C32", "L32C32", None]
    assert [b["pairs"] for b in chosen] == [1, 0, 2, 1, 1, 0]
    mid = chosen[2]["layers"]
    assert mid["C96"]["d_ms_ssim"] == pytest.approx(0.0) and mid["C96"]["d_delta_e"] == pytest.approx(-2.0)
    assert mid["C96"]["j"] == pytest.approx(0.01)
    assert mid["current"]["n"] == 1  # the bundle's own rows are reported, never chosen
    rows = tool.rows_of(chosen)
    assert rows == [{"min_lam": 50.0}, {"min_lam": 8.0, "chroma_cell": 96},
                    {"min_lam": 1.5, "luma_cell": 32, "chroma_cell": 32}]
    assert tool.monotone_problems(rows) == []
    assert tool.monotone_problems([{"min_lam": 8.0, **fine}, {"min_lam": 1.0, **coarse}])
    table = tool.report(chosen, 0.005)
    assert "| 8–20 | 2 | C96 |" in table and "| ≥ 50 | 1 | none |" in table


def test_names_of_layers(load_tool) -> None:
    tool = load_tool("choose_color_layer")
    assert tool.settings_key({}) == "none"
    assert tool.settings_key({"chroma_cell": 48}) == "C48"
    assert tool.settings_key({"luma_cell": 24, "chroma_cell": 32, "luma_step": 3.0, "chroma_step": 3.0}) == "L24C32s3"
    keys = [tool.settings_key(c) for c in tool.candidate_grid()]
    assert len(set(keys)) == len(keys)


def test_measures_once_and_writes_rows(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    from gateway.codec.cadc.bundle import create_bundle

    bundle = create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "bundle")
    images = tmp_path / "train"
    images.mkdir()
    for i in range(2):
        Image.fromarray(textured_image(120, 96, seed=i)).save(images / f"p{i}.png")
    tool = load_tool("choose_color_layer")
    # 120x96 pictures: 1 / 2 / 4 frames are 0.31 / 0.63 / 1.25 bits per pixel, so only 2 frames lie in
    # [--min-bpp, --max-bpp) and are measured
    args = ["--bundle", str(bundle), "--images", str(images), "--limit", "2", "--frames", "1,2,4",
            "--min-bpp", "0.5", "--max-bpp", "1.0",
            "--candidates", json.dumps([{"chroma_cell": 32}]), "--out", str(tmp_path / "out")]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "codec.color_layer rows:" in out and "| λ of the plain pick |" in out
    lines = (tmp_path / "out" / "measurements.jsonl").read_text().splitlines()
    assert {json.loads(line)["layer"] for line in lines} == {"none", "current", "C32"}
    assert {json.loads(line)["frames"] for line in lines} == {2}
    assert len(lines) == 6
    choice = json.loads((tmp_path / "out" / "choice.json").read_text())
    assert choice["rows"] and all("min_lam" in r for r in choice["rows"])
    assert tool.main(args) == 0  # a rerun takes every measurement from the cache
    assert len((tmp_path / "out" / "measurements.jsonl").read_text().splitlines()) == 6


def test_kodak_and_bad_candidates_are_refused(tmp_path: Path, load_tool) -> None:
    tool = load_tool("choose_color_layer")
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    Image.fromarray(textured_image(64, 64, seed=1)).save(kodak / "k.png")
    assert tool.main(["--bundle", "x", "--images", str(kodak), "--out", str(tmp_path / "o")]) == 2
    assert tool.main(["--bundle", "x", "--images", str(tmp_path), "--candidates", '[{"chroma_cell": 2}]',
                      "--out", str(tmp_path / "o")]) == 2
