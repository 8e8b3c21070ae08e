"""A PatchGAN discriminator for CADC's stage-2 adversarial loss.

Scores overlapping patches instead of whole images, so it judges texture
(what one-step diffusion decoders get wrong at very low rates) and works on
any crop size.  Spectral norm keeps it stable without a gradient penalty.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """``n_layers`` strided conv blocks; output is a ``[B,1,h,w]`` map of patch logits."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, width, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, n_layers):
            nxt = min(width * 2**i, width * 8)
            layers += [spectral_norm(nn.Conv2d(ch, nxt, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers += [spectral_norm(nn.Conv2d(ch, ch, 3, 1, 1)), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits for images in [0, 1]."""
        return self.net(x * 2.0 - 1.0)
