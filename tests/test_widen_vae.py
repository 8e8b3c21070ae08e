"""Widening a trained model's VAE latent (gateway/training/widen_vae.py, tools/widen_vae.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cadc_fixtures import textured_image
from gateway.errors import ConfigError
from gateway.training.widen_vae import NEW_LOGVAR, latent_maps

ROOT = Path(__file__).resolve().parents[1]


@given(k=st.integers(1, 16), extra=st.integers(1, 16), more=st.integers(0, 32))
def test_latent_maps_keep_the_old_channels_in_order(k: int, extra: int, more: int) -> None:
    new_k, c = k + extra, k + more
    latent, moments, l_t = latent_maps(k, new_k, c)
    assert latent.tolist() == list(range(k))
    # mean and log-variance halves each keep their channels; l_T's noisy latent stays first, its extras follow K.
    assert moments.tolist() == list(range(k)) + list(range(new_k, new_k + k))
    assert l_t.tolist() == list(range(k)) + list(range(new_k, new_k + c - k))


@pytest.mark.parametrize("k,new_k,c", [(8, 8, 24), (8, 4, 24), (8, 16, 4)])
def test_latent_maps_refuse_what_is_not_a_widening(k: int, new_k: int, c: int) -> None:
    with pytest.raises(ConfigError, match="cannot widen|fewer than"):
        latent_maps(k, new_k, c)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    from gateway.codec.cadc.bundle import create_bundle, load_model, save_bundle
    from gateway.training.widen_vae import widen_vae_model

    folder = tmp_path_factory.mktemp("widen_vae")
    torch.manual_seed(0)
    old = load_model(create_bundle(ROOT / "configs" / "models" / "cadc-tiny-y16.yaml", folder / "old"))
    with torch.no_grad():  # the colour correction starts at zero; give it something to keep
        old.color.net[-1].weight.normal_(0, 0.05)
    wide = widen_vae_model(old, 16, seed=1)
    # Through a saved bundle, as tools/widen_vae.py hands it to training.
    return old, load_model(save_bundle(wide, folder / "wide"))


def _image(h: int = 128, w: int = 160, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(textured_image(h, w, seed=seed)).permute(2, 0, 1)[None].float() / 255


def test_widened_model_decodes_what_the_old_one_decodes(pair) -> None:
    old, new = pair
    assert (new.config.vae_latent_channels, new.config.codec.latent_channels) == (16, 32)
    assert int(new.unet.config.in_channels) == 32 and int(new.vae.config.latent_channels) == 16
    x = _image()
    with torch.no_grad():
        # The VAE round trip, the decoder's colour correction included.
        torch.testing.assert_close(new.decode_pixels(new.vae_encode(x)), old.decode_pixels(old.vae_encode(x)),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(new.vae_encode(x)[:, :8], old.vae_encode(x), atol=1e-5, rtol=1e-4)
        # The codec's decoder half: same ŷ, same l_T where it was, zeros in the new latent channels.
        lam = torch.tensor([4.0])
        gain, inv_gain = old.gains(lam)
        y_hat = torch.round(old.analyze(x) * gain[:, :, None, None])
        lt_old, lt_new = old.synthesize_latent(y_hat, inv_gain), new.synthesize_latent(y_hat, inv_gain)
        _, _, at = latent_maps(8, 16, 24)
        torch.testing.assert_close(lt_new[:, at], lt_old, atol=1e-5, rtol=1e-4)
        assert float(lt_new[:, 8:16].abs().max()) == 0.0
        text, _ = old.text(None, 1, x.device, x.dtype)
        l0_old, l0_new = old.denoise(lt_old, text), new.denoise(lt_new, text)
        torch.testing.assert_close(l0_new[:, :8], l0_old, atol=1e-5, rtol=1e-4)
        # float32 sums in another order through the whole decoder: a few pixels differ by ~1e-5
        torch.testing.assert_close(new.decode_pixels(l0_new), old.decode_pixels(l0_old), atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(new.aux_reconstruction(lt_new), old.aux_reconstruction(lt_old), atol=1e-5, rtol=1e-4)


def test_new_channels_are_nearly_deterministic_and_trainable(pair) -> None:
    """Sampling barely perturbs a new channel, and the VAE decoder gets a gradient for reading it."""
    from gateway.training.vae_io import vae_decode, vae_encode

    _, new = pair
    vae = new.vae.train()
    x = _image(64, 64, seed=4)
    latent, _, logvar = vae_encode(new, x, sample=True)
    assert torch.allclose(logvar[:, 8:], torch.full_like(logvar[:, 8:], NEW_LOGVAR))
    assert float(latent[:, 8:].detach().abs().max()) > 0  # random encoder filters: the new channels carry something
    vae_decode(new, latent).square().mean().backward()
    read = vae.decoder.conv_in.weight.grad[:, 8:]
    assert float(read.abs().sum()) > 0, "the VAE decoder gets no gradient for the new channels"
    vae.zero_grad()
    vae.eval()


def test_widen_tool_writes_a_loadable_bundle(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    from gateway.codec.cadc.bundle import create_bundle, load_model

    tool = load_tool("widen_vae")
    src = create_bundle(ROOT / "configs" / "models" / "cadc-tiny.yaml", tmp_path / "src")
    out = tmp_path / "out"
    assert tool.main([str(src), str(out), "--channels", "12"]) == 0
    assert "VAE latent 8 -> 12 channels, l_T 24 -> 28" in capsys.readouterr().out
    assert load_model(out).config.vae_latent_channels == 12
    assert tool.main([str(out), str(tmp_path / "again"), "--channels", "8"]) == 2
    assert "cannot widen the VAE latent from 12 to 8" in capsys.readouterr().err


def test_the_vae16_config_is_what_widening_cadc_tiny_y16_makes(pair) -> None:
    """configs/models/cadc-tiny-y16-vae16.yaml trains the bundle tools/widen_vae.py writes; its recipes load."""
    from gateway.codec.cadc.config import CADCConfig
    from gateway.training.config import TrainConfig

    _, new = pair
    written = CADCConfig.from_yaml(ROOT / "configs" / "models" / "cadc-tiny-y16-vae16.yaml").to_dict()
    made = new.config.to_dict()
    for d in (written, made):
        d.pop("description"), d.pop("name")
    assert written == made
    vae = TrainConfig.from_yaml(ROOT / "configs" / "train" / "cadc-tiny-vae16.yaml")
    assert [s.kind for s in vae.stages] == ["vae"]
    for name in ("cadc-tiny-vae16-codec.yaml", "cadc-tiny-vae16-codec-more.yaml", "cadc-tiny-vae16-codec-frozen.yaml",
                 "cadc-tiny-vae16-balanced.yaml"):
        codec = TrainConfig.from_yaml(ROOT / "configs" / "train" / name)
        assert [s.kind for s in codec.stages] == ["codec"]
        assert {"vae.encoder.", "vae."} & set(codec.stages[0].frozen)  # the encoder makes the latent target
