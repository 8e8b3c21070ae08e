"""CADC's training objective ``L = λ·R + D`` (paper eq. 13), term by term.

R is the estimated rate of ŷ and ẑ in bits per pixel.  D mixes MSE,
1 − MS-SSIM, the ADGIC auxiliary loss ‖x − x̂_aux‖², a latent alignment term
‖l0 − E(x)‖² (keeps the codec's l0 in the VAE's latent space), a hinge GAN
loss from a patch discriminator (stage 2), and LPIPS / CLIP terms from local
weight files named in the recipe.  Nothing is downloaded, and nothing is
skipped silently: a recipe that weights a perceptual term whose weights do
not load fails at start with the path (:func:`require_perceptual_weights`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gateway.errors import ConfigError
from gateway.eval.metrics import ms_ssim_torch

log = logging.getLogger(__name__)


@dataclass
class LossWeights:
    """Weights of the distortion terms; zero switches a term off."""

    mse: float = 1.0
    ms_ssim: float = 0.0
    aux: float = 0.0
    latent: float = 0.0
    latent_balanced: float = 0.0  # latent alignment with every channel's error relative to its variance
    gan: float = 0.0
    lpips: float = 0.0
    clip: float = 0.0
    color: float = 0.0  # MSE of 8x8 block means: the low-frequency colour the other terms under-weigh
    kl: float = 0.0  # stage-0 VAE only

    @property
    def needs_latent_target(self) -> bool:
        """Whether a term compares l0 with the VAE encoder's latent of the picture."""
        return self.latent > 0 or self.latent_balanced > 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "LossWeights":
        """Weights from a config mapping; unknown keys are a :class:`ConfigError`."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown loss weights {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})


def bits_per_pixel(bits_y: torch.Tensor, bits_z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-image estimated rate in bpp from the model's bit estimates."""
    return (bits_y + bits_z) / float(height * width)


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (``[B]``)."""
    return (x - y).pow(2).flatten(1).mean(1)


def balanced_latent_mse(l0: torch.Tensor, target: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """Per image (``[B]``): each channel's squared error over that channel's variance in the batch's target.

    A plain MSE weighs latent channels by their spread, so the low-variance
    channels a widened VAE adds (fine detail; 4-5x less variance than the
    old ones in run 16's) hardly pull the codec: it left them empty.  Here a
    channel the codec predicts as a constant costs ~1 whatever its scale.
    """
    var = target.detach().transpose(0, 1).flatten(1).var(dim=1).clamp_min(floor)
    return ((l0 - target).pow(2).mean(dim=(2, 3)) / var).mean(dim=1)


def ms_ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − MS-SSIM per image; the reconstruction is clamped so SSIM stays defined."""
    return 1.0 - ms_ssim_torch(x, y.clamp(0, 1))


def color_loss(x: torch.Tensor, y: torch.Tensor, block: int = 8) -> torch.Tensor:
    """MSE between the ``block``-pixel block means of two images, per image.

    Measured colour casts and desaturation are errors of the block means
    (what the eye sees as colour), which plain MSE weighs no more than any
    pixel noise; this term gives them their own weight at almost no cost.
    """
    return mse_per_image(F.avg_pool2d(x, block, ceil_mode=True), F.avg_pool2d(y, block, ceil_mode=True))


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss per image."""
    return -fake_logits.flatten(1).mean(1)


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss (scalar)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) ‖ N(0, 1)) per image, averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).mean(1)


class LPIPSLoss(nn.Module):
    """LPIPS from a local TorchScript file (inputs in [-1, 1]); never downloads."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1, y * 2 - 1).flatten(1).mean(1)


class CLIPLoss(nn.Module):
    """1 − cosine similarity of CLIP image embeddings, from a local transformers folder."""

    _MEAN = (0.48145466, 0.4578275, 0.40821073)
    _STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, path: Path) -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.net = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(self._MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self._STD).view(1, 3, 1, 1), persistent=False)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        e = self.net(pixel_values=(x - self.mean) / self.std).image_embeds
        return F.normalize(e, dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - (self._embed(x) * self._embed(y)).sum(-1)


_PERCEPTUAL = {"lpips": ("a TorchScript LPIPS file", LPIPSLoss), "clip": ("a transformers CLIP vision folder", CLIPLoss)}


def require_perceptual_weights(stages: list[Any], lpips_path: str | None, clip_path: str | None) -> None:
    """ConfigError, naming the path, when a stage weights LPIPS / CLIP and its local weights are not there.

    Called when a run starts, so a missing file stops it then, not hours
    later when the stage that needs it begins.
    """
    for name, path in (("lpips", lpips_path), ("clip", clip_path)):
        asking = [s.name for s in stages if getattr(s.loss, name) > 0]
        if asking and (not path or not Path(path).exists()):
            what = _PERCEPTUAL[name][0]
            raise ConfigError(f"stage(s) {asking} weight the {name} loss, but its weights are not at {name}_path "
                              f"{path!r}: put {what} there, or set loss.{name}: 0 in those stages")


def load_perceptual(weights: LossWeights, lpips_path: str | None, clip_path: str | None) -> dict[str, nn.Module]:
    """The LPIPS / CLIP modules of the terms ``weights`` switches on, from their local files (ConfigError if they fail)."""
    modules: dict[str, nn.Module] = {}
    for name, path in (("lpips", lpips_path), ("clip", clip_path)):
        if getattr(weights, name) <= 0:
            continue
        what, factory = _PERCEPTUAL[name]
        if not path or not Path(path).exists():
            raise ConfigError(f"the {name} loss is weighted but {name}_path {path!r} does not exist: put {what} there")
        try:
            modules[name] = factory(Path(path))
        except Exception as exc:  # torch.jit / transformers errors vary; the path is what the user can fix
            raise ConfigError(f"the {name} loss weights at {path} do not load ({what} expected): "
                              f"{type(exc).__name__}: {exc}") from exc
        log.info("%s loss enabled from %s", name, path)
    return modules


def codec_distortion(
    x: torch.Tensor,
    out: Mapping[str, Any],
    weights: LossWeights,
    latent_target: torch.Tensor | None = None,
    disc: nn.Module | None = None,
    perceptual: Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """Every active distortion term, per image (``[B]`` tensors), plus their weighted sum ``D``.

    Pixel terms compare ``out["x_hat"]`` with ``out["x_target"]`` (the decoded
    window of ``x``) when the model decoded a window, else with ``x``.
    """
    x_hat = out["x_hat"]
    target = out.get("x_target")
    target = x if target is None else target
    terms: dict[str, torch.Tensor] = {"mse": mse_per_image(target, x_hat)}
    total = weights.mse * terms["mse"]
    if weights.ms_ssim > 0:
        terms["ms_ssim"] = ms_ssim_loss(target, x_hat)
        total = total + weights.ms_ssim * terms["ms_ssim"]
    if weights.color > 0:
        terms["color"] = color_loss(target, x_hat)
        total = total + weights.color * terms["color"]
    if weights.aux > 0 and out.get("x_aux") is not None:
        x_aux = out["x_aux"]
        if x_aux.shape[-2:] != x.shape[-2:]:
            # The auxiliary decoder may stop short of full resolution; compare at its scale.
            ref = F.interpolate(x, size=x_aux.shape[-2:], mode="area")
        else:
            ref = x
        terms["aux"] = mse_per_image(ref, x_aux)
        total = total + weights.aux * terms["aux"]
    if weights.latent > 0 and latent_target is not None and out.get("l0") is not None:
        terms["latent"] = mse_per_image(out["l0"], latent_target)
        total = total + weights.latent * terms["latent"]
    if weights.latent_balanced > 0 and latent_target is not None and out.get("l0") is not None:
        terms["latent_balanced"] = balanced_latent_mse(out["l0"], latent_target)
        total = total + weights.latent_balanced * terms["latent_balanced"]
    if weights.gan > 0 and disc is not None:
        terms["gan"] = gan_generator_loss(disc(x_hat))
        total = total + weights.gan * terms["gan"]
    for name, module in (perceptual or {}).items():
        terms[name] = module(target, x_hat.clamp(0, 1))
        total = total + getattr(weights, name) * terms[name]
    terms["D"] = total
    return terms
