"""Images in and out of the model's VAE for the stage-0 loss and the latent target.

The codec's ``l0`` lives in the VAE latent space after shift and
``scaling_factor`` (the space the UNet works in).  Decoding always goes
through :meth:`CADCModel.vae_decode` and the deterministic encode through
:meth:`CADCModel.vae_encode`, so training stays in step with how the codec
decodes ``l0``; only the stage-0 *sampled* posterior of a KL VAE is computed
here, with the same shift and scale.
"""

from __future__ import annotations

import torch
from torch import nn


def vae_encode(model: nn.Module, x: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Scaled latent of images ``x`` in [0, 1], plus (mean, logvar) for KL VAEs (None for tiny VAEs).

    ``sample`` draws from a KL VAE's posterior (stage-0 training); otherwise
    the posterior mean, exactly as :meth:`CADCModel.vae_encode`.
    """
    vae = model.vae
    if not sample:
        return model.vae_encode(x), None, None
    enc = vae.encode(x * 2.0 - 1.0)
    dist = getattr(enc, "latent_dist", None)
    if dist is None:
        return model.vae_encode(x), None, None
    cfg = vae.config
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return (dist.sample() - shift) * cfg.scaling_factor, dist.mean, dist.logvar


def vae_decode(model: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """Images in roughly [0, 1] from a scaled latent (not clamped, so gradients flow)."""
    return model.vae_decode(latent)


@torch.no_grad()
def latent_std(model: nn.Module, images: list[torch.Tensor], crop: int = 256) -> float:
    """Standard deviation of the VAE's unscaled latent (posterior mean) over centre crops of ``images``.

    ``1 / latent_std`` is the ``scaling_factor`` that gives the UNet's latent
    space unit variance, as Stable Diffusion's VAEs are configured.
    ``images`` are ``[3, H, W]`` uint8 tensors.
    """
    vae = model.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    total, total_sq, count = 0.0, 0.0, 0
    for img in images:
        h, w = img.shape[-2:]
        ch, cw = min(crop, h) // 8 * 8, min(crop, w) // 8 * 8
        top, left = (h - ch) // 2, (w - cw) // 2
        x = img[None, :, top : top + ch, left : left + cw].float() / 255.0
        enc = vae.encode(x * 2.0 - 1.0)
        dist = getattr(enc, "latent_dist", None)
        lat = (dist.mean if dist is not None else enc.latents).double() - shift
        total += float(lat.sum())
        total_sq += float((lat * lat).sum())
        count += lat.numel()
    mean = total / count
    return float((total_sq / count - mean * mean) ** 0.5)
