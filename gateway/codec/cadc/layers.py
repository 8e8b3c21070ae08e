"""The codec's own convolutional networks (everything but the diffusers/transformers parts).

Kept deliberately plain (conv + GELU, pixel-shuffle upsampling) so that the
encoder stays light and the parameter networks are easy to run in float64 at
coding time.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """A 'same'-padded convolution (halving the size when ``stride`` is 2)."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class Upsample2x(nn.Module):
    """Sub-pixel (pixel-shuffle) x2 upsampling: cheaper and sharper than transposed convs."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv(cin, cout * 4, 3)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class ResidualBlock(nn.Module):
    """``x + conv(GELU(conv(x)))``: extra depth at a fixed size that starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, 3)
        self.conv2 = conv(channels, channels, 3)
        # Zero-initialised output: a block added to a trained transform leaves it unchanged at first.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


def residual_stack(channels: int, count: int) -> nn.Module:
    """``count`` residual blocks (the identity when 0)."""
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(count)]) if count else nn.Identity()


class AnalysisTransform(nn.Module):
    """``g_a``: image in [-1, 1] -> y at 1/2**n_down of the side.

    Stride-2 stages (a 5x5 conv, then 3x3 convs), ``stage_blocks[i]`` residual
    blocks after stage ``i`` (at 1/2**(i+1) of the side: depth where the
    picture's detail still is) and ``blocks`` residual blocks at y's size.
    """

    def __init__(self, widths: list[int], y_channels: int, blocks: int = 0,
                 stage_blocks: list[int] | None = None) -> None:
        super().__init__()
        chans = [3, *widths, y_channels]
        self.kernels = [5] + [3] * (len(chans) - 2)
        layers: list[nn.Module] = []
        for i, k in enumerate(self.kernels):
            layers.append(conv(chans[i], chans[i + 1], k, stride=2))
            if i < len(chans) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.n_stages = len(chans) - 1
        counts = list(stage_blocks or [0] * len(widths))
        if len(counts) != len(widths):
            raise ValueError(f"stage_blocks needs one count per width ({len(widths)}), got {counts}")
        self.stage_blocks = counts
        # Kept apart from ``net`` (and parameter-free where a count is 0) so that bundles without stage blocks
        # keep their parameter names and a block added to a trained g_a starts as the identity (warm starts).
        self.stages = nn.ModuleList(residual_stack(w, k) for w, k in zip(widths, counts))
        self.refine = residual_stack(y_channels, blocks)

    def run_stages(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Stages ``first`` to ``last - 1`` (each: its conv, then GELU and stage blocks if it has them)."""
        for i in range(first, last):
            x = self.net[2 * i](x)
            if i < len(self.stages):
                x = self.stages[i](self.net[2 * i + 1](x))
        return x

    def reach(self, stages: int) -> int:
        """Pixels of the picture on each side of a position that its first ``stages`` stages read."""
        total = 0
        for i in range(stages):
            total += self.kernels[i] // 2 * 2**i  # the stride-2 conv, at 1/2**i of the side
            if i < len(self.stage_blocks):
                total += 2 * self.stage_blocks[i] * 2 ** (i + 1)  # two 3x3 convs per block, at 1/2**(i+1)
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.run_stages(x, 0, self.n_stages))


class HyperAnalysis(nn.Module):
    """``h_a``: y -> z at 1/4 of y's side."""

    def __init__(self, y_channels: int, width: int, z_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv(y_channels, width, 3), nn.GELU(),
            conv(width, width, 3, stride=2), nn.GELU(),
            conv(width, z_channels, 3, stride=2),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class HyperSynthesis(nn.Module):
    """``h_s``: ẑ -> hyper features (2·N channels) at y's size."""

    def __init__(self, z_channels: int, width: int, y_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv(z_channels, width, 3), nn.GELU(),
            Upsample2x(width, width), nn.GELU(),
            Upsample2x(width, width), nn.GELU(),
            conv(width, 2 * y_channels, 3),
        )

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.net(z_hat)


class UGAQScale(nn.Module):
    """UGAQ [4.1]: ``m = f_u(y − UP(ẑ)) ≥ 1``, the encoder-only per-element scale.

    ``max_scale`` > 1 bounds m to ``[1, max_scale]`` (a sigmoid instead of
    ``1 + softplus``): an unbounded m can grow until it cancels the λ gain,
    which leaves the rate nearly independent of λ.
    """

    def __init__(self, z_channels: int, y_channels: int, width: int, max_scale: float = 0.0,
                 init_scale: float = 0.0) -> None:
        super().__init__()
        # z and y may differ in channel count; the paper's UP is spatial only, so match channels first.
        self.z_proj = nn.Identity() if z_channels == y_channels else nn.Conv2d(z_channels, y_channels, 1)
        self.f_u = nn.Sequential(conv(y_channels, width, 3), nn.GELU(), conv(width, y_channels, 3))
        self.max_scale = float(max_scale)
        if init_scale:
            self._start_at(float(init_scale))

    def _start_at(self, m0: float) -> None:
        """Zero the output conv and set its bias so that m = ``m0`` for every input.

        The weights still get gradients (the hidden layer is not zero), so training leaves the constant
        start wherever the loss asks; Adam's step size does not shrink with the squashing's slope.
        """
        if self.max_scale > 1.0:
            p = (m0 - 1.0) / (self.max_scale - 1.0)
            u0 = math.log(p / (1.0 - p))  # inverse sigmoid
        else:
            u0 = math.log(math.expm1(m0 - 1.0))  # inverse softplus
        out = self.f_u[-1]
        with torch.no_grad():
            out.weight.zero_()
            out.bias.fill_(u0)

    def forward(self, y: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        z_bar = F.interpolate(self.z_proj(z_hat), size=y.shape[-2:], mode="bilinear", align_corners=False)
        u = self.f_u(y - z_bar)
        if self.max_scale > 1.0:
            return 1.0 + (self.max_scale - 1.0) * torch.sigmoid(u)
        return 1.0 + F.softplus(u)


class QuadtreeContext(nn.Module):
    """Mean/scale of ŷ for the 4 quadtree steps.

    Step 0 sees only the hyper features; step k > 0 also sees the ŷ decoded
    before it (zeros elsewhere) through a ``kernel``-sized conv.  Which
    elements a step decodes is :func:`gateway.codec.cadc.model.quadtree_masks`.
    """

    def __init__(self, y_channels: int, width: int, kernel: int = 5) -> None:
        super().__init__()
        n = y_channels
        self.ctx = nn.ModuleList([conv(n, width, kernel) for _ in range(3)])
        self.params = nn.ModuleList(
            [nn.Sequential(conv(2 * n + (width if k else 0), width, 1), nn.GELU(), conv(width, 2 * n, 1)) for k in range(4)]
        )

    def forward(self, step: int, hyper: torch.Tensor, y_known: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, scale) in y units for quadtree ``step`` (0..3); ``y_known`` is ŷ masked to earlier groups."""
        feats = hyper if step == 0 else torch.cat([hyper, self.ctx[step - 1](y_known)], dim=1)
        mean, scale_raw = self.params[step](feats).chunk(2, dim=1)
        return mean, F.softplus(scale_raw)


class SynthesisTransform(nn.Module):
    """``g_s``: ŷ -> l_T with C channels at 1/8 of the image side.

    With ``blocks`` > 0, residual blocks run at ŷ's size (cheap: 1/32 of the
    side) before the upsampling and at l_T's size before the output conv.
    """

    def __init__(self, y_channels: int, width: int, latent_channels: int, n_up: int, blocks: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(y_channels, width, 3), nn.GELU()]
        for _ in range(n_up):
            layers += [Upsample2x(width, width), nn.GELU()]
        layers += [conv(width, width, 3), nn.GELU(), conv(width, latent_channels, 3)]
        self.net = nn.Sequential(*layers)
        # Outside ``net`` so the first bundles' parameter names still match (warm starts).
        self.low = residual_stack(width, blocks)
        self.high = residual_stack(width, blocks)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        net = self.net
        h = self.low(net[1](net[0](y_hat)))
        for layer in net[2:-1]:
            h = layer(h)
        return net[-1](self.high(h))


class AuxDecoder(nn.Module):
    """ADGIC [4.2]: light decoder from l_T[:k] (the VAE-latent part) to pixels (x8), output nominally in [0, 1]."""

    def __init__(self, widths: list[int], in_channels: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(in_channels, widths[0], 3), nn.GELU()]
        chans = [widths[0], *widths]
        for i in range(3):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(chans[i], chans[i + 1], 3), nn.GELU()]
        layers.append(conv(chans[3], 3, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, l4: torch.Tensor) -> torch.Tensor:
        return self.net(l4) + 0.5


class ColorCorrection(nn.Module):
    """``x̂ + UP8(f(l0, pool8(x̂)))``: the block-mean colour the VAE decoder loses, put back.

    A small VAE decoder normalises its features by group over the whole
    picture (GroupNorm with two channels per group at full resolution), which
    drops absolute colour and tone: on Kodak its round trip alone was off by
    up to 15 of 255 in the mean of a channel, and replacing only its 16x16
    block means by the original's raised PSNR by 0.2-4.8 dB.  This net works
    at l0's resolution (1/8 of the side), sees l0 and the decoder's own block
    means, and adds a smooth (bilinearly upsampled) correction; it starts at
    zero, so adding it leaves a trained decoder unchanged.
    """

    def __init__(self, latent_channels: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv(latent_channels + 3, width, 3), nn.GELU(), conv(width, width, 3), nn.GELU(), conv(width, 3, 1)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, l0: torch.Tensor, x_dec: torch.Tensor) -> torch.Tensor:
        h, w = l0.shape[-2:]
        pooled = F.adaptive_avg_pool2d(x_dec[..., : 8 * h, : 8 * w], (h, w))
        correction = self.net(torch.cat([l0, pooled.to(l0.dtype)], dim=1))
        up = F.interpolate(correction, size=x_dec.shape[-2:], mode="bilinear", align_corners=False)
        return x_dec + up.to(x_dec.dtype)
