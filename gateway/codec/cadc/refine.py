"""Encoder-side refinement of CADC's symbols: spend sender CPU to send better ones.

``g_a`` is a small amortised encoder: for one picture, the symbols it gives
are not the ones that minimise the codec's own rate-distortion loss.  With
the whole decoder at hand (g_s, the one-step UNet, the VAE decoder and the
colour correction), the sender can optimise ``y`` for one (λ, Δ) setting
directly: gradient steps on ``λ·bits + D(x, x̂)`` through the encoder's own
path (gain, h_a → ẑ, UGAQ, Δ), every rounding passed straight through.  The
best ``y`` seen (its loss measured at its rounded symbols) is kept, so the
result is never worse under the model's estimated loss than ``g_a``'s.

The bitstream is unchanged in format: a decoder cannot tell a refined
bitstream from another.  This is the "semi-amortised inference" of the
learned-compression literature (Campos et al. 2019; Yang et al. 2020),
here with the diffusion decoder in the loop.  It costs a forward and
backward pass of the decoder per step (seconds per step on a 2-core CPU at
Kodak size), so it is opt-in (``refine_iterations``), for senders whose
pictures wait for a contact window anyway.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from gateway.codec.base import Knobs
from gateway.codec.cadc.entropy_models import bits_from_likelihood, gaussian_likelihood, round_ste
from gateway.codec.cadc.tiled_analysis import to_model_input
from gateway.codec.image_metrics import ms_ssim_torch
from gateway.errors import CodecError

if TYPE_CHECKING:  # pragma: no cover
    from gateway.codec.cadc.codec import CADCAnalysis, CADCCodec


@dataclass(frozen=True)
class RefineSettings:
    """How hard the sender works on one setting's symbols.

    ``iterations``: gradient steps (0: refinement off).  ``step``: Adam's
    learning rate in units of ``g_a``'s output (0.02: a few hundredths of a
    quantisation bin a step, which flips the symbols that sit near a rounding
    boundary the right way).  ``max_pixels``: larger pictures are
    not refined (the decoder's backward pass holds its activations: a process
    peaks at 1.9 GB refining 768x512 and 3.8 GB at 1152x864).  ``mse`` / ``ms_ssim`` / ``color``: the distortion's weights, those
    of cadc-tiny's codec training stage (pixels in [0, 1]; colour is the MSE
    of 8-pixel block means).
    """

    iterations: int = 16
    step: float = 0.02
    max_pixels: int = 1_000_000
    mse: float = 30.0
    ms_ssim: float = 3.0
    color: float = 30.0

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise CodecError(f"refine iterations must be >= 0, got {self.iterations}")
        if not (self.step > 0 and math.isfinite(self.step)):
            raise CodecError(f"refine step must be a positive number, got {self.step}")
        if self.max_pixels < 1:
            raise CodecError(f"refine max_pixels must be >= 1, got {self.max_pixels}")


@dataclass
class RefineReport:
    """What one refinement did, under the model's own (estimated) loss."""

    knobs: Knobs
    iterations: int
    best_iteration: int  # 0: g_a's symbols were kept
    bits_before: float
    bits_after: float
    distortion_before: float
    distortion_after: float
    seconds: float

    @property
    def improved(self) -> bool:
        return self.best_iteration > 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items() if k != "knobs"}


def _distortion(x: torch.Tensor, x_hat: torch.Tensor, s: RefineSettings) -> torch.Tensor:
    d = s.mse * (x - x_hat).pow(2).mean()
    if s.ms_ssim:
        d = d + s.ms_ssim * (1.0 - ms_ssim_torch(x, x_hat)).mean()
    if s.color:
        pool = torch.nn.functional.avg_pool2d
        d = d + s.color * (pool(x, 8, ceil_mode=True) - pool(x_hat, 8, ceil_mode=True)).pow(2).mean()
    return d


def _check(codec: "CADCCodec", analysis: "CADCAnalysis", settings: RefineSettings) -> None:
    if not codec.decodes:
        raise CodecError("refinement needs the whole CADC model (load the codec without encoder_only)")
    h, w = analysis.height, analysis.width
    if h * w > settings.max_pixels:
        raise CodecError(f"a {w}x{h} picture is above the refinement limit of {settings.max_pixels} pixels")


def _loss_function(codec: "CADCCodec", analysis: "CADCAnalysis", knobs: Knobs, settings: RefineSettings) -> Any:
    """``y -> (λ·bits/pixel + D, bits, D)`` at ``knobs``: the encoder's path with rounding passed straight
    through, and the whole decoder (call with the codec's threads set and autocast off)."""
    model = codec.model
    device = codec.device
    h, w = analysis.height, analysis.width
    delta = codec.delta(knobs.delta_code)
    y_lo, y_hi = -codec.y_range, codec.y_range - 1
    lam = torch.tensor([codec.lam(knobs.lam_code)], device=device)
    x = to_model_input(analysis.image, device)
    gain, inv_gain = model.gains(lam)
    text = None

    def loss_of(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nonlocal text
        # The encoder's path (codec._lam_state / _quantize), with rounding passed straight through.
        y_g = y * gain[:, :, None, None]
        z_hat = round_ste(model.h_a(y_g)).clamp(-codec.z_range, codec.z_range)
        bits_z = bits_from_likelihood(model.entropy_bottleneck.likelihood(z_hat)).sum()
        hyper = model.h_s(z_hat)
        v = (y_g / model.ugaq_scale(y, y_g, z_hat)) / delta
        q = round_ste(v).clamp(y_lo, y_hi)
        y_hat = q * delta
        mean, scale = model.entropy_parameters(hyper, y_hat)
        bits = bits_z + bits_from_likelihood(gaussian_likelihood(q, mean / delta, scale / delta)).sum()
        l_t = model.synthesize_latent(y_hat, inv_gain)
        if text is None:
            # The caption (full model) is held at g_a's: a decoder recaptions the refined x̂_aux, nearly
            # the same picture.
            with torch.no_grad():
                x_aux = model.aux_reconstruction(l_t)[..., :h, :w] if model.aux_decoder is not None else None
                text, _ = model.text(x_aux, 1, device, l_t.dtype)
        x_hat = model.decode_pixels(model.denoise(l_t, text))[..., :h, :w]
        # The decoder clamps its picture: so does the loss, with the gradient passed through (as in training).
        x_hat = x_hat + (x_hat.clamp(0.0, 1.0) - x_hat).detach()
        dist = _distortion(x, x_hat, settings)
        return lam[0] * bits / (h * w) + dist, bits, dist

    return loss_of


def measure(codec: "CADCCodec", analysis: "CADCAnalysis", knobs: Knobs,
            settings: RefineSettings) -> tuple[float, float]:
    """(estimated bits, distortion) of ``analysis``'s symbols at ``knobs``, as :func:`refine` reports them.

    One forward pass of the whole decoder, no gradients: what lets a caller
    compare a setting it did not refine (e.g. the same refined ``y`` at
    another Δ) with the ones it did.
    """
    from gateway.codec.cadc.codec import _threads

    _check(codec, analysis, settings)
    with torch.no_grad(), _threads(codec.decoder_threads), torch.autocast(codec.device.type, enabled=False):
        _, bits, dist = _loss_function(codec, analysis, knobs, settings)(analysis.y.to(codec.device))
    return float(bits), float(dist)


def refine(codec: "CADCCodec", analysis: "CADCAnalysis", knobs: Knobs,
           settings: RefineSettings) -> tuple["CADCAnalysis", RefineReport]:
    """An analysis whose ``y`` is optimised for ``knobs`` (use it to encode that setting only), and a report.

    ``y`` is refined where ``g_a``'s output lives, so the encoder's own path
    (λ gain, ``h_a`` → ẑ, UGAQ, Δ) turns it into symbols exactly as for any
    other ``y``.  Raises :class:`CodecError` for a codec that cannot
    synthesise (encoder-only) or a picture above ``settings.max_pixels``.
    """
    from gateway.codec.cadc.codec import _threads

    _check(codec, analysis, settings)
    t0 = time.perf_counter()
    model = codec.model
    requires = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    # The codec keeps the VAE channels_last for decoding; its backward pass is ~15 % faster without.
    model.vae.to(memory_format=torch.contiguous_format)
    try:
        with _threads(codec.decoder_threads), torch.autocast(codec.device.type, enabled=False):
            loss_of = _loss_function(codec, analysis, knobs, settings)
            y = analysis.y.detach().clone().to(codec.device).requires_grad_(True)
            opt = torch.optim.Adam([y], lr=settings.step)
            best: tuple[float, int, torch.Tensor, float, float] | None = None
            first: tuple[float, float] | None = None
            for it in range(settings.iterations + 1):
                loss, bits, dist = loss_of(y)
                loss_value, bits_value, dist_value = float(loss.detach()), float(bits.detach()), float(dist.detach())
                if first is None:
                    first = (bits_value, dist_value)
                if best is None or loss_value < best[0]:
                    best = (loss_value, it, y.detach().clone(), bits_value, dist_value)
                if it == settings.iterations:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        model.vae.to(memory_format=torch.channels_last)
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    assert first is not None and best is not None
    _, best_it, y_best, bits_after, dist_after = best
    refined = replace(analysis, y=y_best.to(analysis.y.dtype), lam_cache={})
    report = RefineReport(knobs=knobs, iterations=settings.iterations, best_iteration=best_it,
                          bits_before=first[0], bits_after=bits_after, distortion_before=first[1],
                          distortion_after=dist_after, seconds=time.perf_counter() - t0)
    return refined, report
