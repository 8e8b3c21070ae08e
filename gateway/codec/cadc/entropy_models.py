"""Entropy models: the factorized prior for ẑ and the Gaussian conditional for ŷ.

Training uses the continuous likelihoods (with additive uniform noise as the
rounding proxy).  Coding uses the same models reduced to exactly reproducible
parameters:

* ẑ: each channel's learned density is tabulated once, in float64, into an
  integer frequency table over the symbols ``[-R, R]``;
* ŷ: scales are snapped to a fixed log-spaced table and means to a fixed grid,
  so the floats handed to the range coder are drawn from a finite, known set
  and come out bit-identical on any decoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: Smallest Gaussian scale, in units of the quantization bin (as in CompressAI).
SCALE_MIN = 0.11
#: Largest scale the coder distinguishes; larger scales are clipped.
SCALE_MAX = 256.0
#: Number of entries of the log-spaced scale table used at coding time.
SCALE_LEVELS = 96
#: Means are snapped to multiples of 1/MEAN_GRID bins at coding time.
MEAN_GRID = 16
#: Precision of the integer frequency tables of the factorized prior.
TABLE_PRECISION_BITS = 16

SCALE_TABLE = np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))
_LOG_SCALE_MIN, _LOG_SCALE_STEP = math.log(SCALE_MIN), (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
_LIKELIHOOD_FLOOR = 1e-9


def bits_from_likelihood(likelihood: torch.Tensor) -> torch.Tensor:
    """Per-sample bits: −Σ log2 p over all but the batch dimension."""
    return -torch.log2(likelihood.clamp_min(_LIKELIHOOD_FLOOR)).flatten(1).sum(1)


def noisy(x: torch.Tensor) -> torch.Tensor:
    """The training proxy of rounding: x + U(−½, ½)."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Rounding with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()


class EntropyBottleneck(nn.Module):
    """Factorized prior: a learned, per-channel monotone CDF (Ballé et al. 2018).

    The cumulative is a small per-channel MLP ``R -> R`` whose weights are kept
    positive (softplus), with tanh-gated non-linearities, so it is monotone.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        """x: [C, 1, L] -> logit of the CDF at x, [C, 1, L]."""
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(matrix), x) + bias
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """P(z in [z−½, z+½]) per element of z: [B, C, H, W]."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cumulative(v - 0.5)
        upper = self._logits_cumulative(v + 0.5)
        # Evaluate on the side of the median where the sigmoid is not saturated (numerical stability).
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return lik.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def integer_tables(self, symbol_range: int) -> np.ndarray:
        """Per-channel integer frequencies over symbols −R..R, shape [C, 2R+1] (float64 holding integers).

        Computed in float64 and rounded to integers so encoder and decoder
        agree exactly; every symbol keeps a nonzero frequency.
        """
        params = {n: p.detach().double() for n, p in self.named_parameters()}
        c = params["matrices.0"].shape[0]
        v = torch.arange(-symbol_range, symbol_range + 1, dtype=torch.float64).repeat(c, 1, 1)

        def cumulative(x: torch.Tensor) -> torch.Tensor:
            for i in range(len(self.matrices)):
                x = torch.matmul(F.softplus(params[f"matrices.{i}"]), x) + params[f"biases.{i}"]
                if i < len(self.factors):
                    x = x + torch.tanh(params[f"factors.{i}"]) * torch.tanh(x)
            return x

        lower, upper = cumulative(v - 0.5), cumulative(v + 0.5)
        sign = -torch.sign(lower + upper)
        pmf = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))[:, 0, :]
        pmf = pmf / pmf.sum(dim=1, keepdim=True).clamp_min(1e-300)
        freq = torch.floor(pmf * (1 << TABLE_PRECISION_BITS)) + 1.0
        return freq.numpy()


def gaussian_likelihood(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(x in [x−½, x+½]) under N(mean, scale²), with scale floored at :data:`SCALE_MIN`."""
    scale = scale.clamp_min(SCALE_MIN)
    v = torch.abs(x - mean)
    # Both tails computed on the upper side of the mean for precision.
    upper = 0.5 * torch.erfc((v - 0.5) / (scale * math.sqrt(2.0)))
    lower = 0.5 * torch.erfc((v + 0.5) / (scale * math.sqrt(2.0)))
    return upper - lower


def quantize_scales(scale: np.ndarray) -> np.ndarray:
    """Snap scales (in bin units) to :data:`SCALE_TABLE`; returns table indices (int64)."""
    scale = np.clip(np.nan_to_num(scale, nan=SCALE_MAX, posinf=SCALE_MAX), SCALE_MIN, SCALE_MAX)
    idx = np.rint((np.log(scale) - _LOG_SCALE_MIN) / _LOG_SCALE_STEP)
    return np.clip(idx, 0, SCALE_LEVELS - 1).astype(np.int64)


def quantize_means(mean: np.ndarray, limit: float) -> np.ndarray:
    """Snap means (in bin units) to multiples of 1/:data:`MEAN_GRID`, clipped to ±limit (float64)."""
    mean = np.nan_to_num(mean, nan=0.0, posinf=limit, neginf=-limit)
    return np.clip(np.rint(mean * MEAN_GRID), -limit * MEAN_GRID, limit * MEAN_GRID) / MEAN_GRID
