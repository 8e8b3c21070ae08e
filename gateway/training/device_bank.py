"""Training images held on the training device, with crops and flips drawn there.

:class:`gateway.training.data.CropSampler` cuts crops on the CPU, one Python
slice per crop, and copies each batch to the device: right for a 2-core CPU
run, where the model's step dwarfs it, but on a GPU a step of the tiny model
is a few milliseconds and a batch of 32-64 crops cut in Python would be a
large part of it.  :class:`DeviceImageBank` puts every image into one padded
``uint8`` tensor on the device once (a few hundred photographs are well under
a gigabyte) and cuts a whole batch with one gather: random image, position
and horizontal (optionally vertical) flip per crop, all drawn by a generator
on the device, so no step waits on the CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch

from gateway.training.data import fit_crop


class DeviceImageBank:
    """``[3,H,W]`` uint8 images on ``device`` (upscaled where a side is below ``min_side``), padded to one tensor."""

    def __init__(self, images: Sequence[torch.Tensor], device: torch.device | str, min_side: int,
                 seed: int = 0) -> None:
        if not images:
            raise ValueError("DeviceImageBank needs at least one image")
        self.device = torch.device(device)
        fitted = [fit_crop(img, min_side) for img in images]  # every crop up to min_side fits every image
        height = max(int(img.shape[-2]) for img in fitted)
        width = max(int(img.shape[-1]) for img in fitted)
        self.data = torch.zeros((len(fitted), 3, height, width), dtype=torch.uint8, device=self.device)
        for i, img in enumerate(fitted):
            self.data[i, :, : img.shape[-2], : img.shape[-1]] = img.to(self.device)
        self.sizes = torch.tensor([[int(img.shape[-2]), int(img.shape[-1])] for img in fitted],
                                  dtype=torch.long, device=self.device)
        self.min_side = int(self.sizes.min())
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        """Device memory the padded images take."""
        return self.data.numel()

    def crops(self, batch: int, size: int, vflip: bool = False) -> torch.Tensor:
        """A ``[batch, 3, size, size]`` float batch in [0, 1]: random images, positions and flips."""
        if size > self.min_side:
            raise ValueError(f"crop {size} is larger than the smallest image side {self.min_side}")
        g, dev = self.generator, self.device
        idx = torch.randint(len(self), (batch,), device=dev, generator=g)
        h, w = self.sizes[idx, 0], self.sizes[idx, 1]
        # floor(u * (n - size + 1)) is uniform over the valid offsets 0 .. n - size.
        top = (torch.rand(batch, device=dev, generator=g) * (h - size + 1)).long().clamp_max(h - size)
        left = (torch.rand(batch, device=dev, generator=g) * (w - size + 1)).long().clamp_max(w - size)
        ramp = torch.arange(size, device=dev)
        hflip = torch.rand(batch, device=dev, generator=g) < 0.5
        cols = left[:, None] + torch.where(hflip[:, None], size - 1 - ramp, ramp)
        if vflip:
            vflipped = torch.rand(batch, device=dev, generator=g) < 0.5
            rows = top[:, None] + torch.where(vflipped[:, None], size - 1 - ramp, ramp)
        else:
            rows = top[:, None] + ramp
        # Advanced indices on dims 0, 2, 3 around a slice: the result is [batch, size, size, 3].
        out = self.data[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).float().div_(255.0)
