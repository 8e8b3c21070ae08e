"""The training pipeline on a tiny CADC model and generated images (no shared data needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from gateway.errors import ConfigError
from gateway.training.checkpoint import best_checkpoint, latest_checkpoint, list_checkpoints, save_checkpoint
from gateway.training.config import TrainConfig
from gateway.training.data import CropSampler, ImageBank
from gateway.training.losses import ms_ssim_loss
from gateway.training.trainer import Trainer

TINY_MODEL = {
    "name": "cadc-test",
    "codec": {"y_channels": 8, "z_channels": 4, "analysis_widths": [4, 4, 8, 8], "hyper_width": 8,
              "latent_channels": 6, "synthesis_width": 8, "aux_widths": [4, 4, 4], "ugaq_width": 4,
              "context_width": 8},
    "unet": {"sample_size": 16, "block_out_channels": [8, 8], "layers_per_block": 1,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
             "cross_attention_dim": 8, "attention_head_dim": 4, "norm_num_groups": 4},
    "vae": {"type": "tiny", "encoder_block_out_channels": [4, 4, 4, 4], "decoder_block_out_channels": [4, 4, 4, 4],
            "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1], "latent_channels": 4},
    "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "beta_end": 0.012},
}


def tiny_recipe(**overrides) -> TrainConfig:
    d = {
        "seed": 3,
        "data": {"train": ["unused"], "crop": 128, "batch": 1, "val_size": 128},
        "val_every": 3, "val_lams": 2, "log_every": 2, "ckpt_every": 100, "export_every_s": 1e9,
        "stages": [
            {"name": "vae", "kind": "vae", "steps": 2, "lr": 1e-3, "warmup": 1, "loss": {"mse": 1.0, "ms_ssim": 0.1}},
            {"name": "codec", "kind": "codec", "steps": 4, "lr": 1e-3, "warmup": 1, "frozen": ["vae."],
             "disc_start": 0,
             "loss": {"mse": 30.0, "ms_ssim": 1.0, "aux": 10.0, "latent": 1.0, "gan": 0.05}},
        ],
    }
    d.update(overrides)
    return TrainConfig.from_dict(d)


def generated_bank() -> ImageBank:
    rng = np.random.default_rng(0)
    astro = torch.from_numpy(data.astronaut()[::3, ::3].copy()).permute(2, 0, 1)  # 171x171
    noise = torch.from_numpy(rng.integers(0, 256, (3, 140, 150), dtype=np.uint8))
    small = torch.from_numpy(rng.integers(0, 256, (3, 90, 100), dtype=np.uint8))  # smaller than a crop
    return ImageBank.from_tensors([astro, noise, small])


@pytest.fixture(scope="module")
def make_model():
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel

    cfg = CADCConfig.from_dict(TINY_MODEL)

    def build():
        torch.manual_seed(0)
        return CADCModel(cfg)

    return build


def test_training_steps_and_exact_resume(tmp_path, make_model):
    torch.set_num_threads(1)
    bank = generated_bank()
    cfg = tiny_recipe()
    t1 = Trainer(make_model(), cfg, tmp_path / "run", bank, val_bank=bank, progress=False)
    last = t1.run(max_steps=4)  # both stages: VAE, then codec with the GAN term
    assert t1.step == 4 and t1.stage.name == "codec"
    assert math.isfinite(last["loss"]) and last["bpp"] > 0
    assert {"mse", "ms_ssim", "aux", "latent", "gan", "d_loss"} <= set(last)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"kind": "val"' in line for line in lines)

    from gateway.codec.cadc.bundle import load_model, save_bundle

    export_dir = tmp_path / "bundle"
    export_dir.mkdir()
    (export_dir / "MODEL_CARD.md").write_text("card")
    t1.export_dir, t1.export_fn = export_dir, save_bundle
    assert t1.export() == export_dir
    assert (export_dir / "MODEL_CARD.md").read_text() == "card"  # carried over the swap
    reloaded = load_model(export_dir)
    trained, loaded = t1.model.state_dict(), reloaded.state_dict()
    assert set(trained) == set(loaded)
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)

    path = t1.save()
    assert path == latest_checkpoint(tmp_path / "run")
    after_first = t1.train_step()
    batch_first = t1.sampler.next_batch()

    t2 = Trainer(make_model(), cfg, tmp_path / "run", bank, progress=False)
    assert t2.resume()
    assert t2.step == 4 and t2.stage.name == "codec"
    after_second = t2.train_step()
    assert after_second["loss"] == pytest.approx(after_first["loss"], rel=1e-5)
    assert after_second["bpp"] == pytest.approx(after_first["bpp"], rel=1e-5)
    assert torch.equal(t2.sampler.next_batch(), batch_first)


def test_a_non_finite_loss_skips_the_step(tmp_path, make_model):
    torch.set_num_threads(1)
    t = Trainer(make_model(), tiny_recipe(), tmp_path, generated_bank(), progress=False)
    t._enter_stage(1)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    real_forward = t.model.forward
    t.model.forward = lambda *a, **k: {**real_forward(*a, **k), "bits_y": torch.full((1,), float("nan"))}
    assert t.train_step()["skipped"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    t.model.forward = real_forward
    assert math.isfinite(t.train_step()["loss"]) and t._bad_steps == 0


def test_crop_sampler_is_reproducible_and_sized():
    bank = generated_bank()
    a = CropSampler(bank, 64, 3, seed=5)
    b = CropSampler(bank, 64, 3, seed=5)
    x = a.next_batch()
    assert x.shape == (3, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, b.next_batch())
    state = a.state_dict()
    nxt = a.next_batch()
    a.load_state_dict(state)
    assert torch.equal(a.next_batch(), nxt)
    a.configure(128, 2)  # the 90x100 image is upscaled to fit
    assert a.next_batch().shape == (2, 3, 128, 128)


def test_checkpoints_keep_the_newest_and_the_best_of_the_stage(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"x": step}, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000030.pt", "ckpt-00000040.pt"]
    assert not list(tmp_path.glob(".ckpt-*"))
    for step, score in ((50, 2.0), (60, 1.0), (70, 3.0), (80, None)):
        save_checkpoint(tmp_path, step, {"stage_index": 1}, keep=2, score=score)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000060.pt", "ckpt-00000070.pt", "ckpt-00000080.pt"]
    assert best_checkpoint(tmp_path).name == "ckpt-00000060.pt"
    save_checkpoint(tmp_path, 90, {"stage_index": 2}, keep=2, score=9.0)  # a new stage scores on its own objective
    assert best_checkpoint(tmp_path).name == "ckpt-00000090.pt"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000080.pt", "ckpt-00000090.pt"]


def test_images_are_decoded_on_demand_through_a_bounded_cache(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    bank = ImageBank([tmp_path], cache_mb=2 * 200 * 300 * 3 / 2**20)  # room for two decoded images
    assert len(bank) == 6 and bank.size(3) == (200, 300) and bank._cache.bytes == 0  # sizes from the headers
    sampler = CropSampler(bank, 64, 4, seed=1)
    for _ in range(5):
        assert sampler.next_batch().shape == (4, 3, 64, 64)
        assert bank._cache.bytes <= 2 * 200 * 300 * 3
    assert torch.equal(bank[2], torch.from_numpy(np.array(Image.open(tmp_path / "2.png"))).permute(2, 0, 1))


def test_recipe_rejects_typos():
    with pytest.raises(ConfigError):
        tiny_recipe(val_evry=3)
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({"data": {"train": ["x"]}, "stages": [{"name": "s", "kind": "vae", "steps": 1,
                                                                       "loss": {"msse": 1.0}}]})
    with pytest.raises(ConfigError, match="rate_estimate must be one of"):
        TrainConfig.from_dict({"data": {"train": ["x"]}, "stages": [{"name": "s", "kind": "codec", "steps": 1,
                                                                       "rate_estimate": "exact"}]})
    with pytest.raises(ConfigError, match="ckpt_every must be a number"):
        tiny_recipe(ckpt_every="often")
    assert tiny_recipe(export_every_s="1.0e9").export_every_s == 1e9  # YAML 1.1 reads that as a string
    cfg = tiny_recipe()
    assert cfg.total_steps == 6 and cfg.stage_at(0) == (0, 0) and cfg.stage_at(3) == (1, 1)


def test_ms_ssim_loss_has_gradients():
    x = torch.rand(2, 3, 64, 64)
    y = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    loss = ms_ssim_loss(x, y).mean()
    loss.backward()
    assert 0 < float(loss.detach()) < 1 and torch.isfinite(y.grad).all()


def test_warm_start_keeps_what_fits_and_overrides_apply(tmp_path, make_model, load_tool):
    """A new VAE and a switched-off ADGIC: the codec parts come from the bundle, the new VAE stays fresh."""
    import yaml

    from gateway.codec.cadc.bundle import save_bundle

    source = make_model()
    save_bundle(source, tmp_path / "old")
    changed = dict(TINY_MODEL, vae={"type": "kl", "block_out_channels": [4, 8], "layers_per_block": 1,
                                     "norm_num_groups": 4, "latent_channels": 4,
                                     "down_block_types": ["DownEncoderBlock2D"] * 2,
                                     "up_block_types": ["UpDecoderBlock2D"] * 2})
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(changed))
    tool = load_tool("train")
    model = tool.build_model(str(tmp_path / "new.yaml"), ["codec.adgic=false", "codec.ugaq=true"], str(tmp_path / "old"))
    assert model.config.codec.adgic is False and model.aux_decoder is None
    old, new = source.state_dict(), model.state_dict()
    assert all(torch.equal(new[k], old[k]) for k in new if k.startswith(("g_a.", "h_s.", "unet.")))
    assert not any(k.startswith("vae.") and k in old and old[k].shape == new[k].shape and torch.equal(new[k], old[k])
                   for k in new if "weight" in k)

    only_vae = tool.build_model(str(tmp_path / "new.yaml"), [], str(tmp_path / "old"), ["unet."])
    fresh = only_vae.state_dict()
    assert all(torch.equal(fresh[k], old[k]) for k in fresh if k.startswith("unet."))
    assert not all(torch.equal(fresh[k], old[k]) for k in fresh if k.startswith("g_a.") and "weight" in k)

    with pytest.raises(ConfigError, match="KEY=VALUE"):
        tool.build_model(str(tmp_path / "new.yaml"), ["codec.adgic"], None)
    with pytest.raises(ConfigError, match="unknown keys in codec"):
        tool.build_model(str(tmp_path / "new.yaml"), ["codec.adgik=false"], None)


def test_windowed_pixel_losses_colour_term_and_lr_scales(tmp_path, make_model):
    """A codec stage can decode only a window of each crop, weigh block-mean colour, and scale group LRs."""
    torch.set_num_threads(1)
    from gateway.training.losses import color_loss

    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(color_loss(x, x), torch.zeros(2))
    shifted = (x + 0.1).clamp(0, 1)
    assert torch.all(color_loss(x, shifted) > 0)

    model = make_model()
    torch.manual_seed(1)
    out = model(torch.rand(1, 3, 128, 128), torch.tensor([2.0]), window=64)
    assert out["x_hat"].shape == out["x_target"].shape == (1, 3, 64, 64)
    assert out["l0"].shape[-2:] == (16, 16), "the latent still covers the whole crop"

    stage = {"name": "codec", "kind": "codec", "steps": 2, "lr": 1e-3, "warmup": 1, "frozen": ["vae."],
             "pixel_window": 64, "lr_scale": {"log_gain": 10.0},
             "loss": {"mse": 30.0, "color": 30.0, "aux": 10.0, "latent": 1.0}}
    cfg = tiny_recipe(stages=[stage])
    trainer = Trainer(model, cfg, tmp_path / "run", generated_bank(), progress=False)
    last = trainer.run(max_steps=2)
    assert math.isfinite(last["loss"]) and last["color"] >= 0
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert len(lrs) == 2 and lrs[1] == pytest.approx(10 * lrs[0])
    with pytest.raises(ConfigError, match="pixel_window"):
        tiny_recipe(stages=[{"name": "c", "kind": "codec", "steps": 1, "pixel_window": 60}])
    # A prefix naming no parameter (misspelt, or blocks this model config does not build) is refused, not run at 1x.
    misspelt = tiny_recipe(stages=[{**stage, "lr_scale": {"log_gain": 10.0, "g_s.lwo.": 3.0}}])
    with pytest.raises(ConfigError, match=r"\[.g_s.lwo..\] name no parameter"):
        Trainer(model, misspelt, tmp_path / "run2", generated_bank(), progress=False)


def test_balanced_latent_alignment_weighs_every_channel_alike(tmp_path, make_model):
    """latent_balanced: a channel predicted as its mean costs ~1 whatever its scale; the trainer feeds it."""
    torch.set_num_threads(1)
    from gateway.training.losses import LossWeights, balanced_latent_mse, mse_per_image

    torch.manual_seed(0)
    target = torch.randn(4, 2, 16, 16) * torch.tensor([2.0, 0.2]).view(1, 2, 1, 1)
    empty_second = target.clone()
    empty_second[:, 1] = target[:, 1].mean()
    empty_first = target.clone()
    empty_first[:, 0] = target[:, 0].mean()
    # A plain MSE barely notices the small channel left empty; the balanced one charges both alike.
    assert mse_per_image(empty_second, target).mean() < 0.02 * mse_per_image(empty_first, target).mean()
    assert balanced_latent_mse(empty_second, target).mean() == pytest.approx(0.5, rel=0.05)
    assert balanced_latent_mse(empty_first, target).mean() == pytest.approx(0.5, rel=0.05)
    assert torch.allclose(balanced_latent_mse(target, target), torch.zeros(4))
    assert LossWeights.from_dict({"latent_balanced": 1.0}).needs_latent_target
    assert not LossWeights.from_dict({"mse": 1.0}).needs_latent_target

    cfg = tiny_recipe(stages=[{
        "name": "codec", "kind": "codec", "steps": 2, "lr": 1e-3, "warmup": 1, "frozen": ["vae."],
        "loss": {"mse": 30.0, "latent_balanced": 1.0}}])
    last = Trainer(make_model(), cfg, tmp_path / "run", generated_bank(), progress=False).run(max_steps=2)
    assert math.isfinite(last["latent_balanced"]) and last["latent_balanced"] > 0


def test_truncated_latents_are_completed_by_the_entropy_model(make_model):
    """complete_latent keeps received steps, fills the rest with μ; all-received is the identity."""
    model = make_model()
    torch.manual_seed(2)
    n = model.config.codec.y_channels
    hyper = torch.randn(2, 2 * n, 4, 6)
    y_hat = torch.randint(-3, 4, (2, n, 4, 6)).float()
    with torch.no_grad():
        assert torch.equal(model.complete_latent(hyper, y_hat, torch.tensor([4, 4])), y_hat)
        out = model.complete_latent(hyper, y_hat, torch.tensor([1, 4]))
        masks = model.quadtree_masks(y_hat)
        assert torch.equal(out[1], y_hat[1])
        assert torch.equal(out[0] * masks[0, 0], y_hat[0] * masks[0, 0]), "step 0 was received"
        mu1, _ = model.context(1, hyper[:1], (y_hat[:1] * masks[0]))
        assert torch.allclose((out[:1] * masks[1]), mu1 * masks[1]), "step 1 is the context model's mean"
        only_z = model.complete_latent(hyper, y_hat, torch.tensor([0, 0]))
        mu0, _ = model.context(0, hyper, None)
        assert torch.allclose(only_z * masks[0], mu0 * masks[0])
    out = model(torch.rand(2, 3, 128, 128), torch.tensor([2.0, 2.0]), received=torch.tensor([2, 4]))
    assert torch.isfinite(out["x_hat"]).all() and torch.all(out["bits_y"] > 0)


def test_latent_targets_are_computed_once_per_image_and_match_the_crops(tmp_path, make_model):
    """With the VAE encoder frozen, a crop's target is the window of its image's (or mirror image's) latent."""
    from gateway.training.latents import LatentCache

    torch.set_num_threads(1)
    model = make_model()
    bank = generated_bank()
    sampler = CropSampler(bank, 64, 4, seed=5)
    sampler.configure(64, 4, align=8)
    assert all(img.shape[-1] % 8 == 0 and img.shape[-2] % 8 == 0 for img in sampler.images)
    calls = []
    real = model.vae_encode
    model.vae_encode = lambda x: (calls.append(1), real(x))[1]
    cache = LatentCache.build(model, sampler.images, tmp_path, log=None)
    assert len(calls) == 2 * len(bank)
    again = LatentCache.build(model, sampler.images, tmp_path, log=None)  # a resume loads, never re-encodes
    assert len(calls) == 2 * len(bank) and len(again) == len(bank)
    model.vae_encode = real
    with torch.no_grad():
        for _ in range(3):
            x, where = sampler.next_batch_with_positions()
            assert all(t % 8 == 0 and left % 8 == 0 for _, t, left, _ in where)
            target = cache.batch(where, 64)
            own = model.vae_encode(x)
            # Interior latents equal the crop's own encoding (borders see the image around the crop).
            inner = (slice(None), slice(None), slice(3, 5), slice(3, 5))
            assert target.shape == own.shape
            assert torch.allclose(target[inner], own[inner], atol=1e-3)


def test_runs_on_the_same_images_and_encoder_share_one_latent_folder(tmp_path, make_model):
    """--latents-dir: a second run (another out dir) finds the first run's latents and encodes nothing again."""
    torch.set_num_threads(1)
    cfg = tiny_recipe(stages=[{
        "name": "codec", "kind": "codec", "steps": 1, "lr": 1e-3, "warmup": 1, "frozen": ["vae."],
        "loss": {"mse": 30.0, "latent_balanced": 1.0}}])
    model, bank, shared = make_model(), generated_bank(), tmp_path / "latents"
    Trainer(model, cfg, tmp_path / "a", bank, progress=False, latents_dir=shared).run(max_steps=1)
    folders = list(shared.glob("latents-*"))
    assert len(folders) == 1 and len(list(folders[0].glob("*.pt"))) == len(bank)
    assert not list((tmp_path / "a").glob("latents-*"))
    calls = []
    real = model.vae_encode
    model.vae_encode = lambda x: (calls.append(1), real(x))[1]
    Trainer(model, cfg, tmp_path / "b", bank, progress=False, latents_dir=shared).run(max_steps=1)
    assert not calls and list(shared.glob("latents-*")) == folders


def test_gpu_check_dry_run_prints_one_json_line_with_every_step(tmp_path, load_tool, capsys):
    """tools/gpu_check.py, the script a session with a GPU runs, works end to end here with tiny models on the CPU."""
    import json

    assert load_tool("gpu_check").main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["mode"].startswith("dry-run")
    assert result["train"]["steps"] == 2 and result["train"]["loss_finite"]
    assert result["decode"]["images"] == 2 and all(result["decode"]["captions"])
    assert result["symbols"]["identical"] == result["symbols"]["streams"] == 2
    assert result["tiny_train"]["cpu"]["s_per_step"] > 0


def test_the_deep_g_a_recipe_trains_only_what_the_sender_runs():
    """configs/train/cadc-tiny-deep-ga.yaml: g_a (with its new stage blocks) and h_a train; every weight the
    ground station decodes with stays the warm start's, so the decoder side of the bundle is unchanged."""
    from pathlib import Path

    import yaml

    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel
    from gateway.training.trainer import trains

    root = Path(__file__).resolve().parents[1]
    stage = TrainConfig.from_yaml(root / "configs" / "train" / "cadc-tiny-deep-ga.yaml").stages[0]
    data = yaml.safe_load((root / "configs" / "models" / "cadc-tiny.yaml").read_text())
    data["codec"]["analysis_stage_blocks"] = [0, 1, 1, 1]
    model = CADCModel(CADCConfig.from_dict(data))
    trained = [n for n, _ in model.named_parameters() if trains(n, stage)]
    assert trained and all(n.startswith(("g_a.", "h_a.")) for n in trained)
    assert any(n.startswith("g_a.stages.") for n in trained)
    # Run 20's recipe also prices rounded symbols and trains the entropy model; the picture decoder stays.
    rounded = TrainConfig.from_yaml(root / "configs" / "train" / "cadc-tiny-rounded-rate.yaml").stages[0]
    assert rounded.rate_estimate == "rounded"
    trained = [n for n, _ in model.named_parameters() if trains(n, rounded)]
    assert not any(n.startswith(("g_s.", "unet.", "vae.", "color.", "aux_decoder.")) for n in trained)
    assert any(n.startswith("context.") for n in trained) and any(n.startswith("h_s.") for n in trained)


def test_a_ladder_rung_trains_only_on_the_lambdas_it_serves(tmp_path, make_model):
    """lam_train_range narrows the λ drawn for training to a part of the model's range, and nothing else."""
    model = make_model()
    lo, hi = (float(v) for v in model.lam_range)
    mid = (lo * hi) ** 0.5
    t = Trainer(model, tiny_recipe(lam_train_range=[lo, mid]), tmp_path / "a", generated_bank(), progress=False)
    lam, _ = t.sample_knobs(256)
    assert float(lam.min()) >= lo and float(lam.max()) <= mid
    assert t.lam_range == (lo, hi)  # validation still spans the whole range
    whole, _ = Trainer(make_model(), tiny_recipe(), tmp_path / "b", generated_bank(), progress=False).sample_knobs(256)
    assert float(whole.max()) > mid
    with pytest.raises(ConfigError, match="must lie inside the model's lam_range"):
        Trainer(make_model(), tiny_recipe(lam_train_range=[lo, hi * 2]), tmp_path / "c", generated_bank(),
                progress=False)
    for bad in ([5.0, 1.0], [0.0, 1.0], "x", [1.0]):
        with pytest.raises(ConfigError, match="lam_train_range"):
            tiny_recipe(lam_train_range=bad)
    recipe = Path(__file__).resolve().parents[1] / "configs" / "train" / "cadc-tiny-y16-high.yaml"
    assert TrainConfig.from_yaml(recipe).lam_train_range == (0.5, 64.0)


def test_recipe_overrides_reach_the_config_and_bad_ones_are_refused():
    """``--recipe-set`` changes one recipe value (lists indexed by number) without editing the committed file."""
    recipe = Path(__file__).resolve().parents[1] / "configs" / "train" / "cadc-tiny-y16-high.yaml"
    base = TrainConfig.from_yaml(recipe)
    cfg = TrainConfig.from_yaml(recipe, ["seed=24", "stages.0.steps=3600", "stages.0.loss.color=10", "data.batch=2"])
    assert (cfg.seed, cfg.stages[0].steps, cfg.data.batch) == (24, 3600, 2)
    assert cfg.stages[0].loss.color == 10.0 and cfg.stages[0].lr == base.stages[0].lr
    for bad, msg in (("seed", "expected KEY=VALUE"), ("stages.3.steps=1", "not an index"),
                     ("seed.x=1", "not a section"), ("stages.0.steps=0", "steps must be positive")):
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_yaml(recipe, [bad])


# The model each committed recipe with lr_scale entries trains, as its header's command line builds it.
RECIPE_MODELS = {
    "cadc-tiny": ("cadc-tiny", []), "cadc-tiny-codec": ("cadc-tiny", []), "cadc-tiny-low": ("cadc-tiny", []),
    "cadc-tiny-deep": ("cadc-tiny", ["codec.transform_blocks=3"]),
    "cadc-tiny-ugaq1": ("cadc-tiny", ["codec.ugaq_init_scale=1.05"]),
    # M0, the variant with the fewest modules: each of M0 / M1 / M2 trains under this one recipe
    "cadc-tiny-ablation-long": ("cadc-tiny", ["codec.ugaq=false", "codec.adgic=false"]),
    "cadc-tiny-gpu": ("cadc-tiny-gpu", []), "cadc-tiny-gpu-continue": ("cadc-tiny-gpu", []),
    "cadc-tiny-y128": ("cadc-tiny-y128", []),
    "cadc-tiny-y16": ("cadc-tiny-y16", []), "cadc-tiny-y16-high": ("cadc-tiny-y16", []),
    "cadc-tiny-y16-more": ("cadc-tiny-y16", []), "cadc-tiny-y16-deep": ("cadc-tiny-y16", []),
    "cadc-tiny-y16-384": ("cadc-tiny-y16", []), "cadc-tiny-y16-top": ("cadc-tiny-y16", []),
    "cadc-tiny-y16-top-w320": ("cadc-tiny-y16", []),
    "cadc-tiny-vae16-codec": ("cadc-tiny-y16-vae16", []), "cadc-tiny-vae16-codec-more": ("cadc-tiny-y16-vae16", []),
    "cadc-tiny-vae16-codec-frozen": ("cadc-tiny-y16-vae16", []),
    "cadc-tiny-vae16-balanced": ("cadc-tiny-y16-vae16", []),
}


def test_every_committed_recipes_lr_scale_names_parameters_of_its_model() -> None:
    """A recipe whose lr_scale prefix named nothing would be refused at the start of its run; catch it here."""
    from gateway.codec.cadc.model import CADCModel
    from gateway.training.build import read_model_config
    from gateway.training.trainer import check_lr_scale

    root = Path(__file__).resolve().parents[1] / "configs"
    scaled = {p.stem for p in (root / "train").glob("*.yaml")
              if any(stage.lr_scale for stage in TrainConfig.from_yaml(p).stages)}
    assert scaled == set(RECIPE_MODELS), "add the new recipe's model to RECIPE_MODELS"
    for recipe, (model_name, overrides) in RECIPE_MODELS.items():
        model = CADCModel(read_model_config(root / "models" / f"{model_name}.yaml", overrides))
        for stage in TrainConfig.from_yaml(root / "train" / f"{recipe}.yaml").stages:
            check_lr_scale(model, stage)
    with pytest.raises(ConfigError, match="g_s.low.1."):
        check_lr_scale(CADCModel(read_model_config(root / "models" / "cadc-tiny.yaml", ["codec.transform_blocks=1"])),
                       TrainConfig.from_yaml(root / "train" / "cadc-tiny-deep.yaml").stages[0])
