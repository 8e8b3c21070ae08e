"""The full cadc-sd-turbo architecture, built on the meta device (no weights, no memory): shapes fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.model import CADCModel

SD_YAML = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-sd-turbo.yaml"


def _check_sd_turbo_shapes_on_meta() -> None:
    cfg = CADCConfig.from_yaml(SD_YAML)
    assert set(cfg.sources) == {"unet", "vae", "text_encoder", "tokenizer", "captioner"}
    cfg.sources = {}
    with torch.device("meta"):
        model = CADCModel(cfg)
        x = torch.empty(1, 3, 512, 768)
        y = model.analyze(x)
        assert y.shape == (1, 320, 8, 12)  # 1/64
        z = model.h_a(y)
        assert z.shape == (1, 192, 2, 3)  # 1/256
        hyper = model.h_s(z)
        assert hyper.shape == (1, 640, 8, 12)
        assert model.ugaq_scale(y, y, z).shape == y.shape
        mean, scale = model.entropy_parameters(hyper, y)
        assert mean.shape == scale.shape == y.shape
        gain, inv = model.gains(torch.tensor([1.0]))
        l_t = model.synthesize_latent(y, inv)
        assert l_t.shape == (1, 320, 64, 96)  # C=320 at 1/8
        assert model.aux_reconstruction(l_t).shape == (1, 3, 512, 768)
        text = torch.empty(1, 77, 1024)
        eps = model.unet(l_t, torch.tensor([999]), encoder_hidden_states=text).sample
        assert eps.shape == (1, 4, 64, 96)
        assert model.vae_decode(l_t[:, :4]).shape == (1, 3, 512, 768)
    assert model.unet.config.block_out_channels == (320, 640, 1280, 1280) or list(model.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert model.unet.config.in_channels == 320 and model.unet.config.cross_attention_dim == 1024
    assert model.text.text_encoder.config.hidden_size == 1024
    assert type(model.text.captioner).__name__ == "BlipForConditionalGeneration"
    assert type(model.vae).__name__ == "AutoencoderKL"


def test_sd_turbo_shapes_fit_on_meta() -> None:
    # Runs in a fresh interpreter: once transformers has loaded a model in a process,
    # factory functions such as torch.linspace stop honouring `with torch.device("meta")`,
    # so the check would depend on which tests ran before it.
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


if __name__ == "__main__":
    _check_sd_turbo_shapes_on_meta()
