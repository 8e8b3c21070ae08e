"""CADCModel: the whole content-adaptive diffusion codec as one nn.Module.

Encoder side: ``g_a`` -> λ gain -> ``h_a`` -> ẑ -> UGAQ -> ŷ.  Decoder side:
ŷ -> inverse gain -> ``g_s`` -> l_T -> (ADGIC x̂_aux -> BFATC text) -> one-step
UNet -> l_0 -> VAE decoder.  :meth:`CADCModel.forward` is the training pass
(rates estimated with uniform noise, rounding straight-through); the coding
path lives in :mod:`gateway.codec.cadc.codec` and reuses the pieces below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.entropy_models import (
    EntropyBottleneck,
    bits_from_likelihood,
    gaussian_likelihood,
    noisy,
    round_ste,
)
from gateway.codec.cadc.layers import (
    AnalysisTransform,
    AuxDecoder,
    HyperAnalysis,
    HyperSynthesis,
    QuadtreeContext,
    SynthesisTransform,
    UGAQScale,
)
from gateway.codec.cadc.text import TextConditioning

#: Modules whose weights live in codec.safetensors (the rest are diffusers/transformers parts).
CODEC_MODULES = ("g_a", "h_a", "h_s", "entropy_bottleneck", "ugaq", "context", "g_s", "aux_decoder")
CODEC_PARAMS = ("log_gain", "log_inv_gain", "text.null_embedding")


def quadtree_masks(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """[4, 1, 1, H, W] float masks of the 4 quadtree groups, in decoding order.

    Group order (row%2, col%2): (0,0), (1,1), (0,1), (1,0) — the second step
    already has all four diagonal neighbours of the first.
    """
    rows = torch.arange(height, device=device).view(-1, 1) % 2
    cols = torch.arange(width, device=device).view(1, -1) % 2
    order = ((0, 0), (1, 1), (0, 1), (1, 0))
    return torch.stack([((rows == r) & (cols == c)).float() for r, c in order]).view(4, 1, 1, height, width)


def build_unet(config: CADCConfig) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config.unet_kwargs())


def build_vae(config: CADCConfig) -> nn.Module:
    from diffusers import AutoencoderKL, AutoencoderTiny

    cls = AutoencoderTiny if config.vae_type == "tiny" else AutoencoderKL
    return cls(**config.vae_kwargs())


def build_scheduler(config: CADCConfig) -> Any:
    from diffusers import DDPMScheduler

    kw = {"timestep_spacing": "trailing", "clip_sample": False, "prediction_type": "epsilon", **config.scheduler}
    # The noise schedule is a handful of CPU numbers, even when the networks are built on the meta device.
    with torch.device("cpu"):
        return DDPMScheduler(**kw)


def build_text_encoder(config: CADCConfig) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**config.text_encoder))


def build_captioner(config: CADCConfig) -> nn.Module:
    from transformers import BlipConfig, BlipForConditionalGeneration

    return BlipForConditionalGeneration(BlipConfig(**config.captioner))


class CADCModel(nn.Module):
    """The CADC codec model (config-driven; see :class:`CADCConfig`).

    ``parts`` supplies already-loaded diffusers/transformers parts (keys
    ``unet``, ``vae``, ``scheduler``, ``text_encoder``, ``tokenizer``,
    ``captioner``, ``caption_processor``); missing model parts are built with
    random weights from the config.  The tokenizer and caption processor have
    no random init: they come from a bundle or a local folder.
    """

    def __init__(self, config: CADCConfig, parts: dict[str, Any] | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config.codec
        parts = dict(parts or {})
        n = c.y_channels
        self.g_a = AnalysisTransform(c.analysis_widths, n)
        self.h_a = HyperAnalysis(n, c.hyper_width, c.z_channels)
        self.h_s = HyperSynthesis(c.z_channels, c.hyper_width, n)
        self.entropy_bottleneck = EntropyBottleneck(c.z_channels)
        self.ugaq = UGAQScale(c.z_channels, n, c.ugaq_width) if c.ugaq else None
        self.context = QuadtreeContext(n, c.context_width)
        self.g_s = SynthesisTransform(n, c.synthesis_width, c.latent_channels, n_up=c.n_down - 3)
        self.aux_decoder = AuxDecoder(c.aux_widths) if c.adgic else None
        # Gain vectors at K λ levels, stored as logs so interpolation between levels is exponential.
        k = c.lam_levels
        ramp = torch.linspace(1.0, -1.0, k).view(k, 1) * math.log(2.0)  # small λ (more bits) -> larger gain
        self.log_gain = nn.Parameter(ramp.repeat(1, n).clone())
        self.log_inv_gain = nn.Parameter((-ramp).repeat(1, n).clone())

        def part(name: str, build: Any) -> Any:
            return parts[name] if parts.get(name) is not None else build(config)

        self.unet = part("unet", build_unet)
        self.vae = part("vae", build_vae)
        self.scheduler = part("scheduler", build_scheduler)
        text_encoder = part("text_encoder", build_text_encoder) if config.uses_text_encoder else None
        captioner = part("captioner", build_captioner) if config.uses_captioner else None
        cross_dim = int(self.unet.config.cross_attention_dim)
        self.text = TextConditioning(
            c.text_mode,
            cross_dim,
            c.null_text_tokens,
            c.caption_max_tokens,
            text_encoder=text_encoder,
            tokenizer=parts.get("tokenizer"),
            captioner=captioner,
            caption_processor=parts.get("caption_processor"),
        )
        with torch.device("cpu"):
            self.scheduler.set_timesteps(1)
        self.timestep = int(c.timestep if c.timestep is not None else self.scheduler.timesteps[0])
        alpha_bar = float(self.scheduler.alphas_cumprod[self.timestep])
        self.sqrt_alpha_bar, self.sqrt_one_minus_alpha_bar = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        self.model_id = 0  # set by the bundle loader: 16-bit hash of the weight files

    # -- knobs ---------------------------------------------------------------------------------
    @property
    def lam_range(self) -> tuple[float, float]:
        """(λ_min, λ_max) the gains were trained for (L = λ·R + D)."""
        lo, hi = self.config.codec.lam_range
        return float(lo), float(hi)

    @property
    def delta_range(self) -> tuple[float, float]:
        """(Δ_min, Δ_max): the UGAQ bin widths the model supports."""
        lo, hi = self.config.codec.delta_range
        return float(lo), float(hi)

    def gains(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, inverse gain) [B, N] for λ [B], interpolated exponentially between trained levels."""
        lo, hi = self.lam_range
        k = self.log_gain.shape[0]
        pos = (torch.log(lam.to(self.log_gain.dtype).clamp(lo, hi)) - math.log(lo)) / math.log(hi / lo) * (k - 1)
        i = pos.floor().clamp(0, k - 2).long()
        t = (pos - i).unsqueeze(1)
        lg = (1 - t) * self.log_gain[i] + t * self.log_gain[i + 1]
        lig = (1 - t) * self.log_inv_gain[i] + t * self.log_inv_gain[i + 1]
        return torch.exp(lg), torch.exp(lig)

    # -- geometry ------------------------------------------------------------------------------
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad [B, 3, H, W] to the multiple the architecture needs."""
        m = self.config.codec.pad_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    # -- pieces shared by training and coding ----------------------------------------------------
    def analyze(self, x: torch.Tensor) -> torch.Tensor:
        """y = g_a(x) for x in [0, 1] (padded inside)."""
        return self.g_a(self.pad(x) * 2.0 - 1.0)

    def ugaq_scale(self, y_gained: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """UGAQ's m ≥ 1 (ones when UGAQ is off)."""
        if self.ugaq is None:
            return torch.ones_like(y_gained)
        return self.ugaq(y_gained, z_hat)

    def entropy_parameters(self, hyper: torch.Tensor, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean/scale (y units) of every element, each from its own quadtree step (training: all at once)."""
        masks = quadtree_masks(*y_hat.shape[-2:], device=y_hat.device).to(y_hat.dtype)
        mean = torch.zeros_like(y_hat)
        scale = torch.zeros_like(y_hat)
        known = torch.zeros_like(masks[0])
        for step in range(4):
            mu, sigma = self.context(step, hyper, y_hat * known if step else None)
            mean = mean + mu * masks[step]
            scale = scale + sigma * masks[step]
            known = known + masks[step]
        return mean, scale

    def synthesize_latent(self, y_hat: torch.Tensor, inv_gain: torch.Tensor) -> torch.Tensor:
        """l_T = g_s(ŷ / gain) (the decoder's inverse gain)."""
        return self.g_s(y_hat * inv_gain[:, :, None, None])

    def denoise(self, l_t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One-step diffusion [4.4]: the UNet sees all of l_T; l_0 from l_T[:4] in one DDPM step.

        Equals ``DDPMScheduler.step(eps, t, l_T[:4]).pred_original_sample``
        (ε-prediction, no clipping) without the step's random variance term.
        """
        t = torch.full((l_t.shape[0],), self.timestep, device=l_t.device, dtype=torch.long)
        eps = self.unet(l_t, t, encoder_hidden_states=text).sample
        return (l_t[:, :4] - self.sqrt_one_minus_alpha_bar * eps) / self.sqrt_alpha_bar

    def vae_decode(self, l0: torch.Tensor) -> torch.Tensor:
        """Pixels (nominally [0, 1]) from a scaled VAE latent."""
        cfg = self.vae.config
        latent = l0 / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return (self.vae.decode(latent).sample + 1.0) / 2.0

    def vae_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latent (l_0 space) of x in [0, 1] (posterior mean for AutoencoderKL); for training."""
        out = self.vae.encode(x * 2.0 - 1.0)
        latent = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        cfg = self.vae.config
        return (latent - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor

    def decode_latent(self, l_t: torch.Tensor, size: tuple[int, int]) -> dict[str, Any]:
        """Everything after g_s: x_aux, text, one-step UNet, VAE; outputs cropped to ``size`` (H, W)."""
        h, w = size
        x_aux = self.aux_decoder(l_t[:, :4]) if self.aux_decoder is not None else None
        x_aux_c = x_aux[..., :h, :w] if x_aux is not None else None
        text, captions = self.text(x_aux_c, l_t.shape[0], l_t.device, l_t.dtype)
        l0 = self.denoise(l_t, text)
        x_hat = self.vae_decode(l0)[..., :h, :w]
        return {"x_aux": x_aux_c, "l0": l0, "x_hat": x_hat, "captions": captions}

    # -- training ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, lam: torch.Tensor, delta: torch.Tensor | None = None) -> dict[str, Any]:
        """Training pass.

        Args:
            x: images [B, 3, H, W] in [0, 1] (any H, W).
            lam: λ per sample [B], within :attr:`lam_range`.
            delta: Δ per sample [B] (default 1.0), within :attr:`delta_range`.

        Returns a dict: ``x_hat`` (final reconstruction, values in [0, 1] with a
        straight-through clamp), ``x_aux`` (ADGIC output or None), ``bits_y``,
        ``bits_z`` ([B] estimated bits, differentiable), ``l0`` (recovered VAE
        latent), ``l_t``, ``y``, ``y_hat``, ``m`` (UGAQ scale), ``captions``.
        """
        b, _, h, w = x.shape
        if delta is None:
            delta = torch.ones(b, device=x.device, dtype=x.dtype)
        d = delta.to(x.dtype).view(b, 1, 1, 1)
        gain, inv_gain = self.gains(lam.to(x.device))
        y = self.analyze(x)
        y_g = y * gain[:, :, None, None]
        z = self.h_a(y_g)
        bits_z = bits_from_likelihood(self.entropy_bottleneck.likelihood(noisy(z)))
        z_hat = round_ste(z)
        hyper = self.h_s(z_hat)
        m = self.ugaq_scale(y_g, z_hat)
        v = (y_g / m) / d
        y_hat = round_ste(v) * d
        mean, scale = self.entropy_parameters(hyper, y_hat)
        bits_y = bits_from_likelihood(gaussian_likelihood(noisy(v), mean / d, scale / d))
        l_t = self.synthesize_latent(y_hat, inv_gain)
        out = self.decode_latent(l_t, (h, w))
        x_hat = out["x_hat"]
        out["x_hat"] = x_hat + (x_hat.clamp(0.0, 1.0) - x_hat).detach()
        out.update(bits_y=bits_y, bits_z=bits_z, l_t=l_t, y=y, y_hat=y_hat, m=m)
        return out
