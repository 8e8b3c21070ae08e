"""tools/eval.py end to end on two generated images with classical codecs."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from skimage import data


def test_eval_writes_json_table_plots_and_crops(tmp_path, capsys, load_tool):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.astronaut()[::2, ::2][:192, :256]).save(images / "astro.png")
    Image.fromarray(np.ascontiguousarray(data.chelsea()[:160, :224])).save(images / "cat.png")
    out = tmp_path / "out"
    tool = load_tool("eval")
    rc = tool.main(["--codecs", "jpeg,webp", "--images", str(images), "--frames", "1,2", "--out", str(out),
                    "--reference", "jpeg", "--crops", "1", "--crop-size", "64"])
    assert rc == 0

    per_image = json.loads((out / "images" / "astro.json").read_text())
    assert {(r["codec"], r["frames"]) for r in per_image} == {(c, f) for c in ("jpeg", "webp") for f in (1, 2)}
    for r in per_image:
        if r["ok"]:
            assert r["bytes"] <= r["budget_bytes"] and 0 < r["ms_ssim"] <= 1 and r["psnr"] > 10
        else:
            assert r["error"]  # a budget miss is recorded, not fatal
    assert any(r["ok"] for r in per_image)

    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rows"]) == 4 and "webp" in summary["bd_rate"]
    table = (out / "summary.md").read_text()
    assert "| jpeg | 1 |" in table and "BD-rate against jpeg" in table
    assert "BD-rate against jpeg" in capsys.readouterr().out
    for name in ("rd_ms_ssim.png", "rd_psnr.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100
    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops and all(c.startswith("astro_") for c in crops)
    with Image.open(out / "crops" / crops[0]) as im:
        assert im.size[1] == 64 + 28


def _one_cat(tmp_path) -> tuple[object, list[str]]:
    """A folder with one small picture and the arguments of a 2-frame run with one 64-pixel crop."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.ascontiguousarray(data.chelsea()[:160, :224])).save(images / "cat.png")
    out = tmp_path / "out"
    return out, ["--images", str(images), "--frames", "2", "--out", str(out), "--crops", "1", "--crop-size", "64",
                 "--no-slow-metrics", "--reference", "jpeg"]


def test_eval_reuse_measures_only_what_is_missing(tmp_path, capsys, load_tool):
    out, common = _one_cat(tmp_path)
    tool = load_tool("eval")
    assert tool.main(["--codecs", "jpeg", *common]) == 0
    first = json.loads((out / "images" / "cat.json").read_text())
    capsys.readouterr()

    assert tool.main(["--codecs", "jpeg,webp", "--reuse", *common]) == 0
    log = capsys.readouterr().out
    assert "jpeg 2 frames (reused)" in log and "webp 2 frames (measured)" in log
    second = {r["codec"]: r for r in json.loads((out / "images" / "cat.json").read_text())}
    assert second["jpeg"] == first[0] and second["webp"]["codec_key"] == "webp"
    assert (out / "crops" / "cat_2f.png").exists()  # redrawn from the kept bitstream
    summary = json.loads((out / "summary.json").read_text())
    assert {r["codec"] for r in summary["rows"]} == {"jpeg", "webp"}


def test_eval_reuse_measures_again_a_record_whose_bitstream_is_gone(tmp_path, capsys, load_tool):
    """Records copied from another folder without their streams still give crops their panels."""
    out, args = _one_cat(tmp_path)
    common = ["--codecs", "jpeg", *args]
    tool = load_tool("eval")
    assert tool.main(common) == 0
    for stream in (out / "streams").iterdir():
        stream.unlink()
    (out / "crops" / "cat_2f.png").unlink()
    capsys.readouterr()
    assert tool.main([*common, "--reuse"]) == 0
    assert "jpeg 2 frames (measured)" in capsys.readouterr().out
    with Image.open(out / "crops" / "cat_2f.png") as im:
        assert im.size[0] == 2 * 64 + 4  # original | jpeg
