"""CADCEncoder: the sender's half of CADC, the networks an encoder runs and nothing else.

``g_a``, the λ gains, the hyperprior (``h_a``, ``h_s``, the factorized prior
of ẑ), UGAQ's ``f_u`` and the quadtree context model: everything that turns
an image into symbols and the probability models that code them.  It imports
no diffusers or transformers and builds no UNet, VAE, text encoder or
captioner, so a sender loads a full-size bundle's encoder in a fraction of
the memory and time of the whole model (:func:`gateway.codec.cadc.bundle.load_encoder`).

:class:`gateway.codec.cadc.model.CADCModel` extends it with the decoder, so
parameter names (``g_a.*``, ``log_gain`` ...) are the same in both and one
``codec.safetensors`` serves either.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.entropy_models import EntropyBottleneck
from gateway.codec.cadc.layers import AnalysisTransform, HyperAnalysis, HyperSynthesis, QuadtreeContext, UGAQScale

#: Modules and parameters of the encoder half (the names of their tensors in codec.safetensors start with these).
ENCODER_MODULES = ("g_a", "h_a", "h_s", "entropy_bottleneck", "ugaq", "context")
ENCODER_PARAMS = ("log_gain", "log_inv_gain")


def is_encoder_tensor(name: str) -> bool:
    """Whether a codec.safetensors tensor name belongs to the encoder half."""
    return name.split(".")[0] in ENCODER_MODULES or name in ENCODER_PARAMS


class CADCEncoder(nn.Module):
    """The encoder half of a CADC model (see the module docstring); ``model_id`` is set by the bundle loader."""

    def __init__(self, config: CADCConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config.codec
        n = c.y_channels
        self.g_a = AnalysisTransform(c.analysis_widths, n, c.transform_blocks, c.analysis_stage_blocks)
        self.h_a = HyperAnalysis(n, c.hyper_width, c.z_channels)
        self.h_s = HyperSynthesis(c.z_channels, c.hyper_width, n)
        self.entropy_bottleneck = EntropyBottleneck(c.z_channels)
        self.ugaq = UGAQScale(c.z_channels, n, c.ugaq_width, c.ugaq_max_scale, c.ugaq_init_scale) if c.ugaq else None
        self.context = QuadtreeContext(n, c.context_width, c.context_kernel)
        # Gain vectors at K λ levels, stored as logs so interpolation between levels is exponential.
        # (No random draws: a subclass that builds more modules after this keeps its random init.)
        levels = c.lam_levels
        # Small λ (more bits) -> larger gain.
        ramp = torch.linspace(1.0, -1.0, levels).view(levels, 1) * math.log(c.gain_init_span)
        self.log_gain = nn.Parameter(ramp.repeat(1, n).clone())
        self.log_inv_gain = nn.Parameter((-ramp).repeat(1, n).clone())
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

    def ugaq_scale(self, y: torch.Tensor, y_gained: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """UGAQ's m ≥ 1 for ``y`` (λ gain applied: ``y_gained``) and ẑ (ones when UGAQ is off)."""
        if self.ugaq is None:
            return torch.ones_like(y_gained)
        return self.ugaq(y_gained if self.config.codec.ugaq_gained_input else y, z_hat)
