"""Reshaping a trained model's latent y in place (gateway/training/reshape_y.py, tools/reshape_y.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cadc_fixtures import textured_image, widened_tiny_codec
from gateway.codec.base import Knobs
from gateway.errors import ConfigError
from gateway.training.reshape_y import channel_map

ROOT = Path(__file__).resolve().parents[1]


@given(groups=st.sampled_from([1, 2, 4]), per_group=st.integers(1, 16), extra=st.integers(1, 16))
def test_channel_map_keeps_each_channel_in_its_group(groups: int, per_group: int, extra: int) -> None:
    old, new = groups * per_group, groups * (per_group + extra)
    m = channel_map(old, new, groups)
    assert len(set(m.tolist())) == old and int(m.max()) < new
    assert ((m // (new // groups)) == torch.arange(old) // per_group).all()


@pytest.mark.parametrize("old,new,groups", [(64, 64, 4), (64, 32, 4), (64, 130, 4)])
def test_channel_map_refuses_what_cannot_grow(old: int, new: int, groups: int) -> None:
    with pytest.raises(ConfigError, match="cannot widen"):
        channel_map(old, new, groups)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    from gateway.codec.cadc.bundle import load_model, save_bundle
    from gateway.codec.cadc.codec import CADCCodec
    from gateway.training.reshape_y import widen_model

    folder = tmp_path_factory.mktemp("widen")
    codec = widened_tiny_codec(folder, color_layer=[])
    wide = widen_model(codec.model, 96, seed=1)
    # Through a saved bundle, as tools/reshape_y.py hands it to training.
    loaded = load_model(save_bundle(wide, folder / "wide"))
    wide_codec = CADCCodec(loaded)
    wide_codec.color_policy = codec.color_policy
    return codec, wide_codec


def test_widened_model_keeps_the_old_codec(pair) -> None:
    """Old channels are computed and modelled as before, and while the new channels are zero g_s makes the old l_T."""
    codec, wide = pair
    old, new = codec.model, wide.model
    assert new.config.codec.y_channels == 96 and wide.model_id != codec.model_id
    at = channel_map(64, 96, new.config.codec.context_groups)
    x = torch.from_numpy(textured_image(128, 160, seed=3)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y_old, y_new = old.analyze(x), new.analyze(x)
        torch.testing.assert_close(y_new[:, at], y_old, atol=1e-5, rtol=1e-4)
        z_old, z_new = old.h_a(y_old), new.h_a(y_new)
        torch.testing.assert_close(z_new, z_old, atol=1e-5, rtol=1e-4)
        hyper_old, hyper_new = old.h_s(z_old.round()), new.h_s(z_old.round())
        torch.testing.assert_close(hyper_new[:, : hyper_old.shape[1]], hyper_old, atol=1e-5, rtol=1e-4)
        known = torch.randn_like(y_new)  # whatever the new channels hold, the old ones' parameters stay
        for step in range(4):
            mean_o, scale_o = old.context(step, hyper_old, known[:, at] if step else None)
            mean_n, scale_n = new.context(step, hyper_new, known if step else None)
            torch.testing.assert_close(mean_n[:, at], mean_o, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(scale_n[:, at], scale_o, atol=1e-5, rtol=1e-4)
        y_hat = torch.zeros_like(y_new)
        y_hat[:, at] = y_old.round()
        torch.testing.assert_close(new.g_s(y_hat), old.g_s(y_old.round()), atol=1e-4, rtol=1e-4)
    # And through the codec: a stream of the widened bundle decodes.
    image = textured_image(128, 160, seed=3)
    stream = wide.encode(wide.analyze(image), Knobs(120, 40), (160, 128))
    assert wide.decode(stream).shape == image.shape


def test_new_channels_are_trainable(pair) -> None:
    """Every weight that reads or writes a new channel gets a gradient, so training can put them to use."""
    _, wide = pair
    model = wide.model.train()
    x = torch.from_numpy(textured_image(64, 64, seed=4)).permute(2, 0, 1)[None].float() / 255
    out = model(x, torch.tensor([1.0]))
    loss = sum(v.float().mean() for k, v in out.items() if torch.is_tensor(v) and v.requires_grad and v.numel())
    loss.backward()
    fresh = torch.ones(96, dtype=torch.bool)
    fresh[channel_map(64, 96, model.config.codec.context_groups)] = False
    for name, grad in (("g_s input", model.g_s.net[0].weight.grad[:, fresh]),
                       ("g_a output", model.g_a.net[-1].weight.grad[fresh]),
                       ("context input", model.context.ctx[0].weight.grad[:, fresh])):
        assert float(grad.abs().sum()) > 0, f"{name} weights of the new channels get no gradient"
    model.eval()


def test_reshape_tool_writes_a_loadable_bundle(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    from gateway.codec.cadc.bundle import create_bundle, load_model

    tool = load_tool("reshape_y")
    src = create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "src")
    out = tmp_path / "out"
    assert tool.main([str(src), str(out), "--channels", "128"]) == 0
    assert "y 64 channels at 1/32 -> 128 at 1/32" in capsys.readouterr().out
    assert load_model(out).config.codec.y_channels == 128
    assert tool.main([str(out), str(tmp_path / "again"), "--channels", "96"]) == 2
    assert "cannot widen y from 128 to 96" in capsys.readouterr().err


def test_finer_grid_keeps_the_trained_filters(tmp_path: Path) -> None:
    """y at 1/16: g_a is the old one cut before its last stride stage, g_s the old one without its first upsampling."""
    from gateway.codec.cadc.bundle import create_bundle, load_model
    from gateway.training.reshape_y import finer_grid_model

    torch.manual_seed(0)
    old = load_model(create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "src"))
    fine = finer_grid_model(old)
    assert (fine.config.codec.y_downsample, fine.config.codec.y_channels) == (16, 64)
    x = torch.rand(1, 3, 128, 256)  # a multiple of both models' padding
    with torch.no_grad():
        # g_a: the old stages up to the one at 1/16, then the old refine blocks.
        torch.testing.assert_close(fine.analyze(x), old.g_a.refine(old.g_a.net[:7](x * 2 - 1)))
        y = torch.randn(1, 64, 8, 12)
        old_net, new_net = old.g_s.net, fine.g_s.net
        h = old.g_s.low(old_net[1](old_net[0](y)))
        for layer in old_net[2:4]:  # the first upsampling only
            h = layer(h)
        for layer in old_net[6:-1]:
            h = layer(h)
        expected = old_net[-1](old.g_s.high(h))
        torch.testing.assert_close(fine.g_s(y), expected)
        assert len(new_net) == len(old_net) - 2
    assert all(torch.equal(p, old.state_dict()[k]) for k, p in fine.state_dict().items() if k.startswith(("unet.", "vae.", "context.")))
    with pytest.raises(ConfigError, match="from y_downsample 32"):
        finer_grid_model(fine)


@pytest.mark.parametrize("name,changed,own", [
    ("cadc-tiny-y128", {"y_channels": 128}, ()),
    # the y16 rung also has its own name and colour-layer rows (chosen for it by tools/choose_color_layer.py)
    ("cadc-tiny-y16", {"y_downsample": 16, "analysis_widths": [24, 32, 48]}, ("color_layer",)),
])
def test_reshaped_configs_match_the_shipped_model_but_for_y(name: str, changed: dict, own: tuple) -> None:
    """Each experimental config is cadc-tiny with only y's shape changed (and what it owns), and its recipe loads."""
    import yaml

    from gateway.codec.cadc.config import CADCConfig
    from gateway.training.config import TrainConfig

    base = CADCConfig.from_yaml(ROOT / "configs" / "models" / "cadc-tiny.yaml").to_dict()
    other = CADCConfig.from_yaml(ROOT / "configs" / "models" / f"{name}.yaml").to_dict()
    assert {k: other["codec"].pop(k) for k in changed} == changed
    for k in changed:
        base["codec"].pop(k)
    for k in own:
        shipped = ROOT / "gateway" / "bundles" / name / "config.yaml"
        assert other["codec"].pop(k) == yaml.safe_load(shipped.read_text())["codec"][k]
        base["codec"].pop(k)
    for cfg in (base, other):
        cfg.pop("name"), cfg.pop("description", None)
    assert other == base
    recipe = TrainConfig.from_yaml(ROOT / "configs" / "train" / f"{name}.yaml")
    assert [s.kind for s in recipe.stages] == ["codec"]
    assert "vae.encoder." in recipe.stages[0].frozen


@given(lo=st.floats(0.1, 4.0), octaves=st.floats(1.0, 14.0), new_lo=st.floats(0.1, 4.0), new_octaves=st.floats(1.0, 14.0),
       levels=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_resampled_gains_read_the_old_table_inside_its_range(lo: float, octaves: float, new_lo: float,
                                                             new_octaves: float, levels: int, seed: int) -> None:
    """A new level whose λ lies in the old range gets the old table's interpolation there; the ends extend."""
    import math

    from gateway.training.reshape_y import resample_gain_table

    old_range, new_range = (lo, lo * 2**octaves), (new_lo, new_lo * 2**new_octaves)
    table = torch.randn(levels, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    new = resample_gain_table(table, old_range, new_range)
    assert new.shape == table.shape
    for j in range(levels):
        lam = math.exp(math.log(new_range[0]) + j / (levels - 1) * math.log(new_range[1] / new_range[0]))
        pos = (math.log(lam) - math.log(lo)) / math.log(old_range[1] / lo) * (levels - 1)
        i = min(max(math.floor(pos), 0), levels - 2)
        expected = table[i] + (pos - i) * (table[i + 1] - table[i])  # a line through the segment, extended at the ends
        torch.testing.assert_close(new[j], expected)


def test_lam_range_reshape_keeps_the_gains_it_can(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    """The tool's --lam-range: the same gains at the shared low end, smaller ones beyond the old top, every
    other tensor unchanged; the written bundle loads with the new range."""
    from gateway.codec.cadc.bundle import create_bundle, load_model

    tool = load_tool("reshape_y")
    torch.manual_seed(0)
    src = create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "src")
    old = load_model(src)
    assert tool.main([str(src), str(tmp_path / "out"), "--lam-range", "0.5", "2048"]) == 0
    assert "λ [0.5, 512.0] -> [0.5, 2048.0]" in capsys.readouterr().out
    new = load_model(tmp_path / "out")
    assert new.lam_range == (0.5, 2048.0)
    with torch.no_grad():
        torch.testing.assert_close(new.gains(torch.tensor([0.5])), old.gains(torch.tensor([0.5])))
        top_old, _ = old.gains(torch.tensor([512.0]))
        top_new, _ = new.gains(torch.tensor([2048.0]))
    assert bool((top_new < top_old).all())
    assert all(torch.equal(p, old.state_dict()[k]) for k, p in new.state_dict().items() if "gain" not in k)
    with pytest.raises(SystemExit):  # nothing to reshape
        tool.main([str(src), str(tmp_path / "none")])


def test_the_continuation_recipe_trains_the_same_objective_from_a_lower_peak() -> None:
    """configs/train/cadc-tiny-y16-more.yaml (a later sitting of the y16 run) differs from the first only in
    its seed, peak lr, warmup and length (one sitting's, at most the first's): the same data, crops, λ/Δ draws,
    frozen parts and loss."""
    from gateway.training.config import TrainConfig

    first = TrainConfig.from_yaml(ROOT / "configs" / "train" / "cadc-tiny-y16.yaml")
    more = TrainConfig.from_yaml(ROOT / "configs" / "train" / "cadc-tiny-y16-more.yaml")
    a, b = first.stages[0], more.stages[0]
    assert b.lr < a.lr and b.warmup > a.warmup and more.seed != first.seed and b.warmup < b.steps <= a.steps
    for field in ("kind", "crop", "batch", "pixel_window", "truncate_prob", "frozen", "lr_scale", "loss"):
        assert getattr(a, field) == getattr(b, field), field
    assert (first.data, first.delta_range, first.lam_sampling) == (more.data, more.delta_range, more.lam_sampling)


@pytest.mark.parametrize("folder", ["cadc-tiny-y16", "cadc-tiny-y16-top"])
def test_the_shipped_y16_rungs_are_the_y16_model_in_float16(folder: str) -> None:
    """The embedded ladder's second and third rungs (gateway/bundles/cadc-tiny-y16, runs 14-30, and
    cadc-tiny-y16-top, runs 33 and 35) are complete bundles of configs/models/cadc-tiny-y16.yaml, stored in float16,
    that the next sitting's --init-bundle can take."""
    import json

    from gateway.codec.cadc.bundle import bundle_model_id, load_model
    from gateway.codec.cadc.config import CADCConfig
    from safetensors.torch import load_file

    carry = ROOT / "gateway" / "bundles" / folder
    want = CADCConfig.from_yaml(ROOT / "configs" / "models" / "cadc-tiny-y16.yaml").to_dict()["codec"]
    model = load_model(carry)
    assert model.config.to_dict()["codec"] == want
    assert bundle_model_id(carry) == model.model_id
    assert {t.dtype for t in load_file(str(carry / "codec.safetensors")).values() if t.is_floating_point()} == {torch.float16}
    assert json.loads((carry / "TRAINING_STATE.json").read_text())["step"] > 0


def test_the_deep_recipe_is_run_26s_command_line() -> None:
    """configs/train/cadc-tiny-y16-deep.yaml holds what run 26 gave cadc-tiny-y16-high.yaml with --recipe-set:
    the same recipe but for seed, length and the new blocks' lr scale, whose names are those the y16 model's
    transform_blocks: 3 makes (a misspelt prefix would silently train them at 1x)."""
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel
    from gateway.training.config import TrainConfig

    high = ROOT / "configs" / "train" / "cadc-tiny-y16-high.yaml"
    deep = TrainConfig.from_yaml(ROOT / "configs" / "train" / "cadc-tiny-y16-deep.yaml")
    new_blocks = [f"g_s.{end}.{i}." for end in ("low", "high") for i in (1, 2)] + [f"g_a.refine.{i}." for i in (1, 2)]
    scales = "{" + ", ".join(f"{p}: 3.0" for p in new_blocks) + ", log_gain: 10.0, log_inv_gain: 10.0, vae.: 0.3, color.: 3.0}"
    run26 = TrainConfig.from_yaml(high, ["seed=26", "stages.0.steps=8000", "stages.0.lr=1.0e-4", f"stages.0.lr_scale={scales}"])
    assert deep == run26
    model = CADCModel(CADCConfig.from_yaml(ROOT / "configs" / "models" / "cadc-tiny-y16.yaml"))
    names = [n for n, _ in model.named_parameters()]
    assert all(any(n.startswith(p) for n in names) for p in new_blocks)
    assert not any(n.startswith(("g_s.low.3.", "g_s.high.3.", "g_a.refine.3.")) for n in names)
