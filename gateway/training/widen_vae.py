"""Widen a trained CADC model's VAE latent (more channels), keeping every trained weight and what it decodes.

Why: cadc-tiny is decoder-bound.  Its 8-channel KL VAE's round trip alone
is 24.1 dB on Kodak, below what AVIF reaches at 8 frames, so no codec on top
of it can reach the classical codecs' butteraugli or colour there
(MODEL_CARD.md, "Where the colour goes"; newer latent-diffusion models use
16-channel VAEs for the same reason).  Training a wider VAE from scratch
takes days on this CPU; a widened one starts as the trained VAE and adds
channels the decoder can learn to use (a 30-minute A/B on BSDS500 `test`:
+0.6 dB over the same VAE trained as long at 8 channels, and still rising).

What changes, with ``k`` the old latent channels, ``K`` the new and ``C``
the channels of l_T (whose first ``k`` are the noisy latent):

* the VAE encoder gives the new mean channels random filters with its old
  ones' spread (zeros would get no gradient: the decoder reads them through
  zero weights at first) and the new log-variances a bias of
  :data:`NEW_LOGVAR`, so sampling adds almost no noise to them;
  ``quant_conv`` / ``post_quant_conv`` pass the new channels through
  unchanged;
* every reader of the latent (the VAE decoder, the colour correction, the
  ADGIC auxiliary decoder, the UNet's input) reads the new channels through
  zero weights, so the pictures stay what they were;
* l_T grows from ``C`` to ``C + K - k`` channels: the new latent channels
  sit at ``k .. K-1`` (l_T[:K] is the noisy latent), the old extra channels
  move up behind them; ``g_s`` makes the new ones zero (its new output rows
  are zero) and the UNet predicts no noise for them (new output rows zero),
  so their l0 is zero until the latent-alignment loss teaches ``g_s`` to
  match the encoder.

The VAE's ``scaling_factor`` stays (one number for all channels); after
stage 0 has trained the new channels, ``tools/vae_scale.py`` says whether
it should move.
"""

from __future__ import annotations

import torch

from gateway.errors import ConfigError
from gateway.training.transplant import Maps, transplant

#: Bias of a new channel's log-variance: posterior std e^-4 ≈ 0.018, so a sampled latent is almost its mean.
NEW_LOGVAR = -8.0


def latent_maps(k: int, new_k: int, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where old channels go: (VAE latent ``k`` → ``new_k``, mean+logvar ``2k`` → ``2 new_k``, l_T ``c`` → ``c + new_k - k``)."""
    if new_k <= k:
        raise ConfigError(f"cannot widen the VAE latent from {k} to {new_k} channels: the new count must be larger")
    if c < k:
        raise ConfigError(f"l_T has {c} channels, fewer than the VAE latent's {k}: not a CADC model")
    latent = torch.arange(k)
    moments = torch.cat([latent, new_k + latent])
    l_t = torch.cat([latent, new_k + torch.arange(c - k)])
    return latent, moments, l_t


def _last_conv(state: dict[str, torch.Tensor], prefix: str) -> str:
    """Name (without .weight) of the highest-numbered conv in ``prefix``'s Sequential."""
    names = [k[: -len(".weight")] for k in state if k.startswith(prefix) and k.endswith(".weight")]
    if not names:
        raise ConfigError(f"the model has no {prefix}* weights: widen only a cadc-tiny-like model")
    return max(names, key=lambda n: int(n[len(prefix):].split(".")[0]))


def widen_vae_state(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], k: int, new_k: int, c: int,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The widened model's tensors (all of them: codec, UNet, VAE) from the old model's (see the module doc)."""
    latent, moments, l_t = latent_maps(k, new_k, c)
    fresh = torch.arange(k, new_k)
    g_s_out = _last_conv(new, "g_s.net.")
    color_in = torch.cat([latent, new_k + torch.arange(3)])  # the colour net reads [l0; block-mean RGB]
    # Per grown tensor: where the old entries go along its grown dimensions.
    maps: dict[str, Maps] = {
        f"{g_s_out}.weight": {0: l_t},
        f"{g_s_out}.bias": {0: l_t},
        "unet.conv_in.weight": {1: l_t},
        "unet.conv_out.weight": {0: latent},
        "unet.conv_out.bias": {0: latent},
        "aux_decoder.net.0.weight": {1: latent},
        "color.net.0.weight": {1: color_in},
        "vae.encoder.conv_out.weight": {0: moments},
        "vae.encoder.conv_out.bias": {0: moments},
        "vae.quant_conv.weight": {0: moments, 1: moments},
        "vae.quant_conv.bias": {0: moments},
        "vae.post_quant_conv.weight": {0: latent, 1: latent},
        "vae.post_quant_conv.bias": {0: latent},
        "vae.decoder.conv_in.weight": {1: latent},
    }
    out = transplant(old, new, lambda name: (lambda _, m=maps[name]: m) if name in maps else None, "widen the VAE of")
    w = out["vae.encoder.conv_out.weight"]
    spread = float(old["vae.encoder.conv_out.weight"][:k].std())
    w[fresh] = torch.randn(w[fresh].shape, generator=generator, dtype=w.dtype) * spread
    for name, idx in (("vae.quant_conv.weight", torch.cat([fresh, new_k + fresh])), ("vae.post_quant_conv.weight", fresh)):
        if name in out:  # diffusers may be configured without the 1x1 convs
            out[name][idx, idx] = 1.0
    logvar_bias = "vae.quant_conv.bias" if "vae.quant_conv.bias" in out else "vae.encoder.conv_out.bias"
    out[logvar_bias][new_k + fresh] = NEW_LOGVAR
    return out


def widen_vae_model(model: "torch.nn.Module", new_channels: int, seed: int = 0) -> "torch.nn.Module":
    """A CADCModel like ``model`` whose VAE latent has ``new_channels`` channels (decodes the same pictures at first)."""
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel

    cfg = model.config
    if str(cfg.vae.get("type", "kl")) != "kl":
        raise ConfigError(f"only a KL VAE can be widened (this model's vae.type is {cfg.vae.get('type')!r})")
    k, c = cfg.vae_latent_channels, cfg.codec.latent_channels
    new_k = int(new_channels)
    latent_maps(k, new_k, c)  # refuses what cannot grow before anything is built
    # The widened UNet and VAE no longer match any pretrained folder the config names.
    data = cfg.to_dict() | {"sources": {n: p for n, p in cfg.sources.items() if n not in ("unet", "vae")}}
    data["codec"] = dict(data["codec"], latent_channels=c + new_k - k)
    data["vae"] = dict(data["vae"], latent_channels=new_k)
    data["unet"] = {key: v for key, v in data["unet"].items() if key not in ("in_channels", "out_channels")}
    new_cfg = CADCConfig.from_dict(data, origin=f"{cfg.name} with a {new_k}-channel VAE latent")
    # Everything but the UNet and the VAE is shared (the text parts have nothing to do with the latent).
    text = model.text
    parts = {"scheduler": model.scheduler, "text_encoder": text.text_encoder, "tokenizer": text.tokenizer,
             "captioner": text.captioner, "caption_processor": text.caption_processor}
    wide = CADCModel(new_cfg, parts)
    state = widen_vae_state(model.state_dict(), wide.state_dict(), k, new_k, c, torch.Generator().manual_seed(seed))
    wide.load_state_dict(state)
    return wide.eval()
