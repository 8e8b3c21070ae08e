"""The codec's own convolutional networks (everything but the diffusers/transformers parts).

Kept deliberately plain (conv + GELU, pixel-shuffle upsampling) so that the
encoder stays light and the parameter networks are easy to run in float64 at
coding time.
"""

from __future__ import annotations

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


class AnalysisTransform(nn.Module):
    """``g_a``: image in [-1, 1] -> y at 1/2**n_down of the side."""

    def __init__(self, widths: list[int], y_channels: int) -> None:
        super().__init__()
        chans = [3, *widths, y_channels]
        layers: list[nn.Module] = []
        for i in range(len(chans) - 1):
            layers.append(conv(chans[i], chans[i + 1], 5 if i == 0 else 3, stride=2))
            if i < len(chans) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
    """UGAQ [4.1]: ``m = f_u(y − UP(ẑ)) ≥ 1``, the encoder-only per-element scale."""

    def __init__(self, z_channels: int, y_channels: int, width: int) -> None:
        super().__init__()
        # z and y may differ in channel count; the paper's UP is spatial only, so match channels first.
        self.z_proj = nn.Identity() if z_channels == y_channels else nn.Conv2d(z_channels, y_channels, 1)
        self.f_u = nn.Sequential(conv(y_channels, width, 3), nn.GELU(), conv(width, y_channels, 3))

    def forward(self, y: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        z_bar = F.interpolate(self.z_proj(z_hat), size=y.shape[-2:], mode="bilinear", align_corners=False)
        return 1.0 + F.softplus(self.f_u(y - z_bar))


class QuadtreeContext(nn.Module):
    """Mean/scale of ŷ for the 4 quadtree steps.

    Step 0 sees only the hyper features; step k > 0 also sees the ŷ of the
    groups decoded before it (zeros elsewhere) through a 5x5 conv.
    """

    def __init__(self, y_channels: int, width: int) -> None:
        super().__init__()
        n = y_channels
        self.ctx = nn.ModuleList([conv(n, width, 5) for _ in range(3)])
        self.params = nn.ModuleList(
            [nn.Sequential(conv(2 * n + (width if k else 0), width, 1), nn.GELU(), conv(width, 2 * n, 1)) for k in range(4)]
        )

    def forward(self, step: int, hyper: torch.Tensor, y_known: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, scale) in y units for quadtree ``step`` (0..3); ``y_known`` is ŷ masked to earlier groups."""
        feats = hyper if step == 0 else torch.cat([hyper, self.ctx[step - 1](y_known)], dim=1)
        mean, scale_raw = self.params[step](feats).chunk(2, dim=1)
        return mean, F.softplus(scale_raw)


class SynthesisTransform(nn.Module):
    """``g_s``: ŷ -> l_T with C channels at 1/8 of the image side."""

    def __init__(self, y_channels: int, width: int, latent_channels: int, n_up: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(y_channels, width, 3), nn.GELU()]
        for _ in range(n_up):
            layers += [Upsample2x(width, width), nn.GELU()]
        layers += [conv(width, width, 3), nn.GELU(), conv(width, latent_channels, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.net(y_hat)


class AuxDecoder(nn.Module):
    """ADGIC [4.2]: light decoder from l_T[:4] to pixels (x8), output nominally in [0, 1]."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(4, widths[0], 3), nn.GELU()]
        chans = [widths[0], *widths]
        for i in range(3):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(chans[i], chans[i + 1], 3), nn.GELU()]
        layers.append(conv(chans[3], 3, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, l4: torch.Tensor) -> torch.Tensor:
        return self.net(l4) + 0.5
