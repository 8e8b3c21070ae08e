"""CADC model pieces: config validation, training forward, gains, knob mapping, one-step denoise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.knob_values import code_from_delta, code_from_lam, delta_from_code, lam_from_code
from gateway.codec.cadc.model import CADCModel, quadtree_masks
from gateway.errors import ConfigError

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml"


def tiny_dict(**codec) -> dict:
    d = yaml.safe_load(TINY_YAML.read_text())
    d["codec"].update(codec)
    return d


@pytest.fixture(scope="module")
def model() -> CADCModel:
    torch.manual_seed(0)
    return CADCModel(CADCConfig.from_yaml(TINY_YAML))


def test_unknown_config_keys_are_refused() -> None:
    d = tiny_dict()
    d["codec"]["y_chanels"] = 3
    with pytest.raises(ConfigError, match="y_chanels"):
        CADCConfig.from_dict(d)
    with pytest.raises(ConfigError, match="text_mode"):
        CADCConfig.from_dict(tiny_dict(text_mode="poem"))


def test_training_forward_shapes_and_gradients(model: CADCModel) -> None:
    x = torch.rand(2, 3, 70, 100)  # not a multiple of anything: padded inside, cropped back
    out = model(x, torch.tensor([1.0, 20.0]), torch.tensor([1.0, 2.0]))
    assert out["x_hat"].shape == x.shape and out["x_aux"].shape == x.shape
    assert out["x_hat"].min() >= 0 and out["x_hat"].max() <= 1
    assert out["bits_y"].shape == (2,) and out["bits_z"].shape == (2,)
    assert torch.all(out["bits_y"] > 0) and torch.all(out["bits_z"] > 0)
    k = model.config.vae_latent_channels
    assert out["l0"].shape[1] == k and out["l_t"].shape[1] == model.config.codec.latent_channels
    assert torch.all(out["m"] >= 1.0)
    loss = out["bits_y"].sum() * 1e-3 + out["bits_z"].sum() * 1e-3 + ((out["x_hat"] - x) ** 2).mean()
    loss = loss + ((out["x_aux"] - x) ** 2).mean()
    loss.backward()
    for name in ("g_a", "h_a", "h_s", "ugaq", "context", "g_s", "aux_decoder", "unet", "entropy_bottleneck"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"{name} got no gradient"
    assert model.log_gain.grad is not None and model.text.null_embedding.grad is not None
    model.zero_grad()
    assert model.vae_encode(torch.rand(1, 3, 64, 64)).shape == (1, k, 8, 8)


def test_gain_interpolation_is_exponential_and_hits_levels(model: CADCModel) -> None:
    lo, hi = model.lam_range
    k = model.config.codec.lam_levels
    levels = [lo * (hi / lo) ** (i / (k - 1)) for i in range(k)]
    gain, inv = model.gains(torch.tensor(levels))
    assert torch.allclose(gain, torch.exp(model.log_gain), rtol=1e-5)
    assert torch.allclose(inv, torch.exp(model.log_inv_gain), rtol=1e-5)
    mid = math.sqrt(levels[1] * levels[2])  # halfway in log λ -> geometric mean of the gains
    g_mid, _ = model.gains(torch.tensor([mid]))
    assert torch.allclose(g_mid[0], torch.sqrt(gain[1] * gain[2]), rtol=1e-5)


def test_knob_code_mapping_round_trips() -> None:
    lam_range, delta_range = (0.25, 64.0), (0.5, 4.0)
    assert lam_from_code(255, lam_range) == pytest.approx(0.25) and lam_from_code(0, lam_range) == pytest.approx(64.0)
    assert delta_from_code(0, delta_range) == pytest.approx(0.5) and delta_from_code(255, delta_range) == pytest.approx(4.0)
    for code in range(256):
        assert code_from_lam(lam_from_code(code, lam_range), lam_range) == code
        assert code_from_delta(delta_from_code(code, delta_range), delta_range) == code
    with pytest.raises(ConfigError):
        lam_from_code(256, lam_range)


def test_denoise_matches_a_ddpm_scheduler_step(model: CADCModel) -> None:
    assert model.timestep == (model.config.codec.timestep or 999)
    assert CADCModel(CADCConfig.from_dict(tiny_dict(timestep=None))).timestep == 999  # trailing spacing, one step
    l_t = torch.randn(1, model.config.codec.latent_channels, 8, 8)
    text = model.text.null_embedding.unsqueeze(0)
    with torch.no_grad():
        eps = model.unet(l_t, torch.tensor([model.timestep]), encoder_hidden_states=text).sample
        ref = model.scheduler.step(eps, model.timestep, l_t[:, : model.latent_primary]).pred_original_sample
        assert torch.allclose(model.denoise(l_t, text), ref, atol=1e-5)


def test_quadtree_masks_partition_the_grid() -> None:
    masks = quadtree_masks(6, 8)
    assert torch.equal(masks.sum(0), torch.ones(1, 1, 6, 8))
    assert masks[0, 0, 0, 0, 0] == 1 and masks[1, 0, 0, 1, 1] == 1


@pytest.mark.parametrize("switches", [dict(ugaq=False), dict(adgic=False), dict(ugaq=False, adgic=False)])
def test_ablation_switches(switches: dict) -> None:
    m = CADCModel(CADCConfig.from_dict(tiny_dict(**switches)))
    out = m(torch.rand(1, 3, 64, 64), torch.tensor([4.0]))
    if not switches.get("adgic", True):
        assert out["x_aux"] is None and m.aux_decoder is None
    if not switches.get("ugaq", True):
        assert torch.all(out["m"] == 1.0) and m.ugaq is None
    assert out["x_hat"].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("max_scale", [4.0, 0.0])
def test_ugaq_init_scale_starts_m_constant_and_training_moves_it(max_scale: float) -> None:
    """A fresh UGAQ started at m0 gives m0 for any input, and its weights still learn (bounded and unbounded m)."""
    torch.manual_seed(0)
    model = CADCModel(CADCConfig.from_dict(tiny_dict(ugaq_max_scale=max_scale, ugaq_init_scale=1.05)))
    x = torch.rand(2, 3, 64, 64)
    out = model(x, torch.tensor([4.0, 64.0]))
    assert torch.allclose(out["m"], torch.full_like(out["m"], 1.05), atol=1e-6)
    opt = torch.optim.Adam(model.ugaq.parameters(), lr=1e-2)
    for _ in range(5):
        out = model(x, torch.tensor([4.0, 64.0]))
        loss = ((out["m"] - 2.0) ** 2).mean()  # any target that needs a non-constant path: m must leave 1.05
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        m = model(x, torch.tensor([4.0, 64.0]))["m"]
    assert float(m.mean()) > 1.1 and float(m.std()) > 0  # no longer the constant start
    # A random start scatters m; the default is unchanged.
    torch.manual_seed(0)
    default = CADCModel(CADCConfig.from_dict(tiny_dict(ugaq_max_scale=max_scale)))
    with torch.no_grad():
        assert float(default(x, torch.tensor([4.0, 64.0]))["m"].std()) > 0


@pytest.mark.parametrize("codec", [dict(ugaq_init_scale=1.0), dict(ugaq_init_scale=4.0, ugaq_max_scale=4.0),
                                   dict(ugaq_init_scale=0.5)])
def test_bad_ugaq_init_scale_is_refused(codec: dict) -> None:
    with pytest.raises(ConfigError, match="ugaq_init_scale"):
        CADCConfig.from_dict(tiny_dict(**codec))


def test_colour_correction_starts_as_the_identity_and_learns_block_means() -> None:
    """Zero-initialised, it leaves the VAE's picture as it is; a few steps pull the block means to a target."""
    torch.manual_seed(0)
    model = CADCModel(CADCConfig.from_dict(tiny_dict(color_correction=True)))
    l0 = torch.randn(1, model.latent_primary, 4, 6)
    with torch.no_grad():
        assert torch.equal(model.decode_pixels(l0), model.vae_decode(l0))
    target = model.vae_decode(l0).detach() + torch.tensor([0.1, -0.05, 0.02]).view(1, 3, 1, 1)  # a colour cast
    opt = torch.optim.Adam(model.color.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(((model.decode_pixels(l0) - target) ** 2).mean())
    for _ in range(60):
        loss = ((model.decode_pixels(l0) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.1 * before


@pytest.mark.parametrize("down,widths", [(16, [24, 32, 48]), (64, [24, 32, 48, 64, 64])])
def test_y_grid_follows_y_downsample(down: int, widths: list[int]) -> None:
    """y at 1/16, 1/32 or 1/64 of the side; g_s always brings it to the VAE latent's 1/8, the padding to z's stride."""
    cfg = CADCConfig.from_dict(tiny_dict(y_downsample=down, analysis_widths=widths))
    assert cfg.codec.pad_multiple == 4 * down
    torch.manual_seed(0)
    m = CADCModel(cfg).eval()
    x = torch.rand(1, 3, 4 * down, 8 * down)
    with torch.no_grad():
        y = m.analyze(x)
        assert tuple(y.shape[-2:]) == (4, 8)
        assert tuple(m.synthesize_latent(y.round(), torch.ones(1, y.shape[1])).shape[-2:]) == (4 * down // 8, down)


@pytest.mark.parametrize("down,widths,match", [(8, [24, 32], "y_downsample"), (16, [24, 32, 48, 64], "analysis_widths")])
def test_bad_y_downsample_is_refused(down: int, widths: list[int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CADCConfig.from_dict(tiny_dict(y_downsample=down, analysis_widths=widths))


def test_analysis_stage_blocks_start_as_the_identity_and_then_deepen_g_a() -> None:
    """A g_a with stage blocks, warm-started from one without, gives the same y until the blocks train."""
    torch.manual_seed(0)
    plain = CADCModel(CADCConfig.from_yaml(TINY_YAML)).eval()
    deep = CADCModel(CADCConfig.from_dict(tiny_dict(analysis_stage_blocks=[0, 1, 1, 2]))).eval()
    report = deep.load_state_dict(plain.state_dict(), strict=False)
    assert not report.unexpected_keys
    assert sorted({k.split(".")[2] for k in report.missing_keys}) == ["1", "2", "3"]  # g_a.stages.<i>...
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        torch.testing.assert_close(deep.analyze(x), plain.analyze(x), rtol=0, atol=0)
        torch.nn.init.normal_(deep.g_a.stages[2][0].conv2.weight, std=0.05)
        assert not torch.equal(deep.analyze(x), plain.analyze(x))


def test_more_transform_blocks_start_as_the_identity_at_both_ends() -> None:
    """transform_blocks 1 -> 3 from trained weights (run 26's warm start): the same y and l_T until the new
    blocks train, and each new block then changes its end of the codec."""
    torch.manual_seed(0)
    one = CADCModel(CADCConfig.from_dict(tiny_dict(transform_blocks=1))).eval()
    three = CADCModel(CADCConfig.from_dict(tiny_dict(transform_blocks=3))).eval()
    report = three.load_state_dict(one.state_dict(), strict=False)
    assert not report.unexpected_keys
    assert sorted({k.rsplit(".", 2)[0] for k in report.missing_keys}) == [
        f"{part}.{i}" for part in ("g_a.refine", "g_s.high", "g_s.low") for i in (1, 2)]
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        y = one.analyze(x)
        inv_gain = one.gains(torch.tensor([4.0]))[1]
        torch.testing.assert_close(three.analyze(x), y, rtol=0, atol=0)
        torch.testing.assert_close(three.synthesize_latent(y, inv_gain), one.synthesize_latent(y, inv_gain), rtol=0, atol=0)
        for block in (three.g_a.refine[2], three.g_s.low[1], three.g_s.high[2]):
            torch.nn.init.normal_(block.conv2.weight, std=0.05)
        assert not torch.equal(three.analyze(x), y)
        assert not torch.equal(three.synthesize_latent(y, inv_gain), one.synthesize_latent(y, inv_gain))


@pytest.mark.parametrize("blocks", [[1, 1], [0, 0, -1, 0]])
def test_bad_analysis_stage_blocks_are_refused(blocks: list[int]) -> None:
    with pytest.raises(ConfigError, match="analysis_stage_blocks"):
        CADCConfig.from_dict(tiny_dict(analysis_stage_blocks=blocks))


def test_rounded_rate_prices_the_written_symbols_and_still_trains_the_encoder(model: CADCModel) -> None:
    """``rounded_rate``: the same bits on every pass (no noise draw), gradients into g_a and the entropy model."""
    x = torch.rand(2, 3, 64, 96)
    lam = torch.tensor([4.0, 64.0])
    first = model(x, lam, rounded_rate=True)
    again = model(x, lam, rounded_rate=True)
    torch.testing.assert_close(first["bits_y"], again["bits_y"], rtol=0, atol=0)
    torch.testing.assert_close(first["bits_z"], again["bits_z"], rtol=0, atol=0)
    noisy = [model(x, lam)["bits_y"] for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])  # the proxy draws its noise anew
    (first["bits_y"].sum() + first["bits_z"].sum()).backward()
    for name in ("g_a", "h_a", "h_s", "context", "entropy_bottleneck"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"{name} got no gradient"
    model.zero_grad()
