"""CADCModel: the whole content-adaptive diffusion codec as one nn.Module.

Encoder side (:class:`~gateway.codec.cadc.encoder.CADCEncoder`, which this
extends): ``g_a`` -> λ gain -> ``h_a`` -> ẑ -> UGAQ -> ŷ.  Decoder side:
ŷ -> inverse gain -> ``g_s`` -> l_T -> (ADGIC x̂_aux -> BFATC text) -> one-step
UNet -> l_0 -> VAE decoder.  :meth:`CADCModel.forward` is the training pass
(rates estimated with uniform noise, rounding straight-through); the coding
path lives in :mod:`gateway.codec.cadc.codec` and reuses the pieces below.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.encoder import ENCODER_MODULES, ENCODER_PARAMS, CADCEncoder
from gateway.codec.cadc.entropy_models import bits_from_likelihood, gaussian_likelihood, noisy, round_ste
from gateway.codec.cadc.layers import AuxDecoder, ColorCorrection, SynthesisTransform
from gateway.codec.cadc.text import TextConditioning

#: Modules whose weights live in codec.safetensors (the rest are diffusers/transformers parts). The
#: encoder's (:data:`ENCODER_MODULES`) are all a sender reads; the rest, the colour correction included,
#: are the decoder's.
CODEC_MODULES = (*ENCODER_MODULES, "g_s", "aux_decoder", "color")
CODEC_PARAMS = (*ENCODER_PARAMS, "text.null_embedding")


#: Spatial phases (row % 2, col % 2) in decoding order for channel group 0: the second step already
#: has all four diagonal neighbours of the first.
PHASE_ORDER = ((0, 0), (1, 1), (0, 1), (1, 0))
#: Per channel-group count, where each group starts: group g's phase at step s is PHASE_ORDER[s] XOR offset[g].
GROUP_OFFSETS = {1: ((0, 0),), 2: ((0, 0), (1, 1)), 4: ((0, 0), (0, 1), (1, 0), (1, 1))}


def step_phase(step: int, group: int, groups: int) -> tuple[int, int]:
    """(row % 2, col % 2) of the ŷ elements that channel ``group`` decodes in quadtree ``step``.

    With 4 groups the phases rotate across channel groups as in DCVC-DC's
    quadtree partition [35]: in every step each group decodes a different
    phase, so from the second step on every position already has some
    channels decoded (cross-channel context) besides its decoded neighbours.
    With 1 group all channels share :data:`PHASE_ORDER` (spatial-only split).
    """
    r, c = PHASE_ORDER[step]
    a, b = GROUP_OFFSETS[groups][group]
    return r ^ a, c ^ b


def quadtree_masks(
    height: int, width: int, channels: int = 1, groups: int = 1, device: torch.device | None = None
) -> torch.Tensor:
    """[4, 1, channels, H, W] float masks of the 4 quadtree steps, in decoding order (see :func:`step_phase`)."""
    rows = torch.arange(height, device=device).view(-1, 1) % 2
    cols = torch.arange(width, device=device).view(1, -1) % 2
    per_group = channels // groups
    steps = []
    for step in range(4):
        chans = []
        for g in range(groups):
            r, c = step_phase(step, g, groups)
            chans.append(((rows == r) & (cols == c)).float().expand(per_group, height, width))
        steps.append(torch.cat(chans, dim=0))
    return torch.stack(steps).view(4, 1, channels, height, width)


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


class CADCModel(CADCEncoder):
    """The CADC codec model (config-driven; see :class:`CADCConfig`).

    ``parts`` supplies already-loaded diffusers/transformers parts (keys
    ``unet``, ``vae``, ``scheduler``, ``text_encoder``, ``tokenizer``,
    ``captioner``, ``caption_processor``); missing model parts are built with
    random weights from the config.  The tokenizer and caption processor have
    no random init: they come from a bundle or a local folder.
    """

    def __init__(self, config: CADCConfig, parts: dict[str, Any] | None = None) -> None:
        super().__init__(config)  # the encoder half: g_a, h_a, h_s, entropy and context models, UGAQ, gains
        c = config.codec
        parts = dict(parts or {})
        n = c.y_channels
        k = config.vae_latent_channels
        self.g_s = SynthesisTransform(n, c.synthesis_width, c.latent_channels, n_up=c.n_down - 3, blocks=c.transform_blocks)
        self.aux_decoder = AuxDecoder(c.aux_widths, k) if c.adgic else None
        self.color = ColorCorrection(k, c.color_width) if c.color_correction else None
        #: k: channels of the VAE latent, i.e. of l_T's primary part l_T[:k] and of the UNet's output.
        self.latent_primary = k

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
            # One step: the scheduler's own trailing pick (999), or the configured t as a custom schedule.
            if c.timestep is None:
                self.scheduler.set_timesteps(1)
            else:
                self.scheduler.set_timesteps(timesteps=[int(c.timestep)])
        self.timestep = int(self.scheduler.timesteps[0])
        alpha_bar = float(self.scheduler.alphas_cumprod[self.timestep])
        self.sqrt_alpha_bar, self.sqrt_one_minus_alpha_bar = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)

    def pretrained_modules(self) -> list[nn.Module]:
        """The large diffusers / transformers networks (UNet, VAE, text encoder, captioner): what a decoder's
        ``precision`` setting applies to (:mod:`gateway.codec.cadc.devices`)."""
        return [m for m in (self.unet, self.vae, self.text.text_encoder, self.text.captioner) if m is not None]

    def part_sizes(self) -> list[tuple[str, nn.Module, int]]:
        """Each present part as (name, module, parameter count), in data-flow order: what ``satgw bundle check``
        and the codec benchmark report."""
        names = ("g_a", "h_a", "h_s", "entropy_bottleneck", "ugaq", "context", "g_s", "aux_decoder", "color",
                 "unet", "vae")
        parts = [(name, getattr(self, name)) for name in names]
        parts += [(name, getattr(self.text, name)) for name in ("text_encoder", "captioner")]
        return [(name, m, sum(p.numel() for p in m.parameters())) for name, m in parts if m is not None]

    # -- pieces shared by training and coding ----------------------------------------------------
    def quadtree_masks(self, y_hat: torch.Tensor) -> torch.Tensor:
        """[4, 1, N, h, w] masks of the elements each quadtree step decodes (this model's channel groups)."""
        c = self.config.codec
        return quadtree_masks(*y_hat.shape[-2:], c.y_channels, c.context_groups, device=y_hat.device).to(y_hat.dtype)

    def entropy_parameters(self, hyper: torch.Tensor, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean/scale (y units) of every element, each from its own quadtree step (training: all at once)."""
        masks = self.quadtree_masks(y_hat)
        mean = torch.zeros_like(y_hat)
        scale = torch.zeros_like(y_hat)
        known = torch.zeros_like(masks[0])
        for step in range(4):
            mu, sigma = self.context(step, hyper, y_hat * known if step else None)
            mean = mean + mu * masks[step]
            scale = scale + sigma * masks[step]
            known = known + masks[step]
        return mean, scale

    def complete_latent(self, hyper: torch.Tensor, y_hat: torch.Tensor, received: torch.Tensor,
                        partial: torch.Tensor | None = None) -> torch.Tensor:
        """ŷ with the quadtree steps a decoder did not receive filled in by the entropy model's means.

        ``received`` [B] (int) is how many of the 4 steps each sample has
        (0: only ẑ).  Steps from there on take the context model's μ given
        everything before them, the missing ones included as their own μ —
        what a decoder of a truncated bitstream can compute, and what the
        training pass feeds ``g_s`` for samples it truncates.  ``partial``
        (shaped like ``y_hat``): 1 where the first missing step's symbol was
        decoded anyway (a prefix cut inside that step); those keep ``y_hat``.
        """
        masks = self.quadtree_masks(y_hat)
        received = received.to(y_hat.device).view(-1, 1, 1, 1)
        first = int(received.min())
        if first >= 4:
            return y_hat
        known_steps = masks[:first].sum(0) if first else torch.zeros_like(masks[0])
        filled = y_hat * known_steps
        for step in range(first, 4):
            mu, _ = self.context(step, hyper, filled if step else None)
            # Samples that received this step keep their symbols; the others take μ.
            keep = (received > step).to(y_hat.dtype)
            if partial is not None:
                keep = torch.maximum(keep, partial * (received == step).to(y_hat.dtype))
            filled = filled + masks[step] * (keep * y_hat + (1 - keep) * mu)
        return filled

    def synthesize_latent(self, y_hat: torch.Tensor, inv_gain: torch.Tensor) -> torch.Tensor:
        """l_T = g_s(ŷ / gain) (the decoder's inverse gain)."""
        return self.g_s(y_hat * inv_gain[:, :, None, None])

    def denoise(self, l_t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One-step diffusion [4.4]: the UNet sees all of l_T; l_0 from l_T[:k] in one DDPM step.

        Equals ``DDPMScheduler.step(eps, t, l_T[:k]).pred_original_sample``
        (ε-prediction, no clipping) without the step's random variance term.
        """
        t = torch.full((l_t.shape[0],), self.timestep, device=l_t.device, dtype=torch.long)
        eps = self.unet(l_t, t, encoder_hidden_states=text).sample
        return (l_t[:, : self.latent_primary] - self.sqrt_one_minus_alpha_bar * eps) / self.sqrt_alpha_bar

    def aux_reconstruction(self, l_t: torch.Tensor) -> torch.Tensor:
        """ADGIC's x̂_aux from l_T[:k] (call only when ADGIC is on)."""
        return self.aux_decoder(l_t[:, : self.latent_primary])

    def vae_decode(self, l0: torch.Tensor) -> torch.Tensor:
        """Pixels (nominally [0, 1]) from a scaled VAE latent."""
        cfg = self.vae.config
        latent = l0 / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return (self.vae.decode(latent).sample + 1.0) / 2.0

    def decode_pixels(
        self, l0: torch.Tensor, pretrained: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    ) -> torch.Tensor:
        """The decoder's picture of l0: the VAE decoder, then the colour correction when the model has one.

        ``pretrained`` wraps the VAE decoder only (e.g. a half-precision
        autocast on a GPU); the colour correction is a codec network like g_s
        and runs in float32.
        """
        with pretrained():
            x = self.vae_decode(l0)
        if self.color is None:
            return x
        return self.color(l0.float(), x.float())

    def vae_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latent (l_0 space) of x in [0, 1] (posterior mean for AutoencoderKL); for training."""
        out = self.vae.encode(x * 2.0 - 1.0)
        latent = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        cfg = self.vae.config
        return (latent - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor

    # -- training ------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        delta: torch.Tensor | None = None,
        window: int | None = None,
        received: torch.Tensor | None = None,
        rounded_rate: bool = False,
    ) -> dict[str, Any]:
        """Training pass.

        Args:
            x: images [B, 3, H, W] in [0, 1] (any H, W).
            lam: λ per sample [B], within :attr:`lam_range`.
            delta: Δ per sample [B] (default 1.0), within :attr:`delta_range`.
            window: when set (pixels, a multiple of 8 below H and W), the VAE
                decodes only a random ``window``² part of l0 — the VAE decoder
                is most of a training step — and ``x_hat`` / ``x_target`` are
                that part of the picture; rate, l0 and x̂_aux still cover it all.
            received: quadtree steps each sample keeps ([B] ints, 4 = all): the
                rest is filled by :meth:`complete_latent` before ``g_s``, so the
                decoder learns to make a picture of a truncated bitstream.  The
                rate still counts every step.

        Returns a dict: ``x_hat`` (reconstruction, values in [0, 1] with a
        straight-through clamp), ``x_target`` (the pixels ``x_hat`` stands for:
        ``x`` or its window), ``x_aux`` (ADGIC output or None), ``bits_y``,
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
        # Rates in float32 even under autocast: a bf16 likelihood summed over thousands of elements drifts.
        symbols = round_ste if rounded_rate else noisy
        with torch.autocast(x.device.type, enabled=False):
            bits_z = bits_from_likelihood(self.entropy_bottleneck.likelihood(symbols(z.float())))
        z_hat = round_ste(z)
        hyper = self.h_s(z_hat)
        m = self.ugaq_scale(y, y_g, z_hat)
        v = (y_g / m) / d
        y_hat = round_ste(v) * d
        mean, scale = self.entropy_parameters(hyper, y_hat)
        with torch.autocast(x.device.type, enabled=False):
            bits_y = bits_from_likelihood(gaussian_likelihood(symbols(v.float()), (mean / d).float(), (scale / d).float()))
        if received is not None:
            y_hat = self.complete_latent(hyper, y_hat, received)
        l_t = self.synthesize_latent(y_hat, inv_gain)
        x_aux = self.aux_reconstruction(l_t)[..., :h, :w] if self.aux_decoder is not None else None
        text, captions = self.text(x_aux, b, l_t.device, l_t.dtype)
        l0 = self.denoise(l_t, text)
        target = x
        if window is not None and window < min(h, w):
            s = window // 8
            i = int(torch.randint(0, h // 8 - s + 1, (1,)))
            j = int(torch.randint(0, w // 8 - s + 1, (1,)))
            x_hat = self.decode_pixels(l0[..., i : i + s, j : j + s])
            target = x[..., 8 * i : 8 * (i + s), 8 * j : 8 * (j + s)]
        else:
            x_hat = self.decode_pixels(l0)[..., :h, :w]
        x_hat = x_hat + (x_hat.clamp(0.0, 1.0) - x_hat).detach()
        return {
            "x_hat": x_hat, "x_target": target, "x_aux": x_aux, "l0": l0, "captions": captions,
            "bits_y": bits_y, "bits_z": bits_z, "l_t": l_t, "y": y, "y_hat": y_hat, "m": m,
        }
