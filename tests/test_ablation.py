"""tools/ablation.py end to end on a tiny model, generated images and two training steps per variant."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image
from skimage import data

from test_training import TINY_MODEL


def test_ablation_trains_three_variants_per_seed_and_summarises_the_seeds(tmp_path, load_tool):
    import torch

    from gateway.codec.cadc.bundle import load_model, save_bundle
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.ascontiguousarray(data.astronaut()[::2, ::2][:160, :192])).save(images / "astro.png")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({
        "seed": 1, "threads": 1, "val_every": 0, "log_every": 1, "ckpt_every": 100, "export_every_s": "1.0e9",
        "data": {"train": [str(images)], "crop": 128, "batch": 1},
        "stages": [{"name": "codec", "kind": "codec", "steps": 2, "lr": 1e-3, "warmup": 1, "frozen": ["vae."],
                    "loss": {"mse": 1.0, "aux": 1.0}}],
    }))
    torch.manual_seed(0)
    vae_source = CADCModel(CADCConfig.from_dict(TINY_MODEL))
    save_bundle(vae_source, tmp_path / "vae-bundle")

    out = tmp_path / "ablation"
    rc = load_tool("ablation").main(["--vae-bundle", str(tmp_path / "vae-bundle"), "--out", str(out),
                                     "--model", str(tmp_path / "model.yaml"), "--train", str(tmp_path / "recipe.yaml"),
                                     "--images", str(images), "--frames", "2,4", "--seeds", "1", "2"])
    assert rc == 0
    for seed in (1, 2):
        run = out / f"seed-{seed}"
        configs = {v: yaml.safe_load((run / v / "bundle" / "config.yaml").read_text())["codec"]
                   for v in ("M0", "M1", "M2")}
        assert [(c["ugaq"], c["adgic"]) for c in configs.values()] == [(False, False), (True, False), (True, True)]
        summary = json.loads((run / "eval" / "summary.json").read_text())
        assert summary["meta"]["reference"] == "M0" and set(summary["meta"]["codecs"]) == {"M0", "M1", "M2"}
        assert set(summary["bd_rate"]) == {"M1", "M2"}
    vae = {k: t for k, t in vae_source.state_dict().items() if k.startswith("vae.")}
    m1 = load_model(out / "seed-1" / "M1" / "bundle").state_dict()
    assert all(torch.equal(m1[k], t) for k, t in vae.items())  # the shared VAE stayed frozen
    # the seeds differ, so the same variant's weights do
    m1_other = load_model(out / "seed-2" / "M1" / "bundle").state_dict()
    assert any(not torch.equal(m1[k], m1_other[k]) for k in m1 if not k.startswith("vae."))

    result = json.loads((out / "ablation.json").read_text())
    assert result["seeds"] == [1, 2]
    paper = {"UGAQ (M1 vs M0)", "ADGIC (M2 vs M1)", "UGAQ + ADGIC (M2 vs M0)"}
    assert set(result["contrasts"]) == paper
    text = (out / "ablation.md").read_text()
    assert "UGAQ (M1 vs M0)" in text and "| 2 frames | 4 frames |" in text
    assert "M1i" not in text  # the opt-in variant no seed has trained
    assert Image.open(out / "ablation.png").size[0] > 600  # the per-seed figure beside the table

    # summarising again without training reads the same evaluations
    rc = load_tool("ablation").main(["--vae-bundle", str(tmp_path / "vae-bundle"), "--out", str(out),
                                     "--seeds", "1", "2", "3", "--summary-only"])
    assert rc == 0 and json.loads((out / "ablation.json").read_text())["seeds"] == [1, 2]

    # the opt-in variant, trained for one seed only, joins that seed's evaluation and its own contrast
    rc = load_tool("ablation").main(["--vae-bundle", str(tmp_path / "vae-bundle"), "--out", str(out),
                                     "--model", str(tmp_path / "model.yaml"), "--train", str(tmp_path / "recipe.yaml"),
                                     "--images", str(images), "--frames", "2,4", "--seeds", "1", "--only", "M1i"])
    assert rc == 0
    assert yaml.safe_load((out / "seed-1" / "M1i" / "bundle" / "config.yaml").read_text())["codec"]["ugaq_init_scale"] == 1.05
    assert set(json.loads((out / "seed-1" / "eval" / "summary.json").read_text())["meta"]["codecs"]) == {"M0", "M1", "M2", "M1i"}
    rc = load_tool("ablation").main(["--vae-bundle", str(tmp_path / "vae-bundle"), "--out", str(out),
                                     "--seeds", "1", "2", "--summary-only"])
    result = json.loads((out / "ablation.json").read_text())
    assert rc == 0 and result["seeds"] == [1, 2]
    assert set(result["contrasts"]) == paper | {"UGAQ, started at m = 1 (M1i vs M0)"}
    assert set(result["per_seed"]["1"]) == set(result["contrasts"]) and set(result["per_seed"]["2"]) == paper
    assert "M1i vs M0" in (out / "ablation.md").read_text()


def test_a_contrast_is_resolved_only_when_its_interval_excludes_zero(load_tool):
    spread = load_tool("ablation").spread
    clear = spread([-10.0, -11.0, -9.0])
    assert clear["resolved"] and clear["ci95"][1] < 0 and abs(clear["mean"] + 10.0) < 1e-9
    assert abs(clear["std"] - 1.0) < 1e-9
    assert not spread([-5.0, 5.0, 1.0])["resolved"]
    one = spread([-30.0])
    assert not one["resolved"] and one["std"] is None


def test_each_seed_trains_from_the_same_start_with_its_own_seed(load_tool):
    ablation = load_tool("ablation")
    args = ablation.parse_args(["--vae-bundle", "B", "--out", "/o", "--pretrained", "vae.", "unet.", "g_a."])
    cmd = ablation.train_command(args, "M1", seed=3)
    assert cmd[cmd.index("--init-parts") + 1: cmd.index("--init-parts") + 4] == ["vae.", "unet.", "g_a."]
    assert cmd[cmd.index("--out") + 1] == "/o/seed-3/M1"
    # One latent folder for every variant and seed: they freeze the same VAE encoder on the same images.
    assert cmd[cmd.index("--latents-dir") + 1] == "/o/latents"
    first = ablation.train_command(args, "M0", seed=1)
    assert first[first.index("--latents-dir") + 1] == "/o/latents"
    assert cmd[-2:] == ["--recipe-set", "seed=3"] and "codec.adgic=false" in cmd
    assert ablation.eval_command(args, seed=3)[ablation.eval_command(args, seed=3).index("--out") + 1] == "/o/seed-3/eval"
