"""Training images: decoded once into RAM, served as random crops and flips.

BSDS500 (500 images of 481x321) fits in a few hundred MB as uint8, so there
is no loader process: on a 2-core machine worker processes would only steal
the cores the model needs.  All randomness comes from one ``torch.Generator``
owned by :class:`CropSampler`; saving its state (see :meth:`CropSampler.state_dict`)
makes the data order resume exactly after a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gateway.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def list_images(folders: Iterable[str | Path]) -> list[Path]:
    """Every image file directly inside ``folders``, sorted so the order is reproducible."""
    paths: list[Path] = []
    for folder in folders:
        d = Path(folder)
        if not d.is_dir():
            raise ConfigError(f"image folder not found: {d}")
        paths.extend(sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    return paths


def load_image(path: Path) -> torch.Tensor:
    """An image file as a ``[3,H,W]`` uint8 tensor (RGB)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageBank:
    """All images of some folders, decoded once and kept in RAM as uint8."""

    def __init__(self, folders: Sequence[str | Path] | str | Path, limit: int | None = None) -> None:
        if isinstance(folders, (str, Path)):
            folders = [folders]
        paths = list_images(folders)
        if limit is not None:
            paths = paths[:limit]
        if not paths:
            raise ConfigError(f"no images found in {list(map(str, folders))}")
        self.paths = paths
        self.images = [load_image(p) for p in paths]

    @classmethod
    def from_tensors(cls, images: Sequence[torch.Tensor]) -> "ImageBank":
        """A bank over in-memory ``[3,H,W]`` uint8 tensors (tests, generated data)."""
        bank = cls.__new__(cls)
        bank.paths = [Path(f"<memory:{i}>") for i in range(len(images))]
        bank.images = [t.contiguous() for t in images]
        return bank

    def __len__(self) -> int:
        return len(self.images)


def _fit_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale an image whose short side is below ``size`` so a crop fits."""
    h, w = img.shape[-2:]
    if min(h, w) >= size:
        return img
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    out = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


class CropSampler:
    """Random ``size``x``size`` crops with random horizontal/vertical flips.

    ``seed`` and ``rank`` fix the stream: each DDP rank draws its own crops.
    """

    def __init__(self, bank: ImageBank, size: int, batch_size: int, seed: int = 0, rank: int = 0,
                 vflip: bool = False, max_size: int | None = None) -> None:
        self.bank = bank
        self.size = size
        self.batch_size = batch_size
        self.vflip = vflip
        self.generator = torch.Generator().manual_seed(seed * 1000 + rank)
        # Upscale small images once, for the largest crop any stage will ask for.
        self._sized = [_fit_crop(img, max(size, max_size or 0)) for img in bank.images]

    def configure(self, size: int, batch_size: int, align: int = 1) -> None:
        """Change crop size and batch (per training stage); the random stream continues unchanged.

        ``align`` > 1 puts every crop at a multiple of ``align`` pixels of an
        image trimmed to a multiple of ``align`` (so a horizontally flipped
        crop sits at a multiple too): crops then line up with the grid of a
        latent computed once per image (:class:`gateway.training.latents.LatentCache`).
        """
        if any(min(img.shape[-2:]) < size for img in self._sized):
            self._sized = [_fit_crop(img, size) for img in self._sized]
        if align > 1:
            self._sized = [img[:, : img.shape[-2] // align * align, : img.shape[-1] // align * align]
                           for img in self._sized]
        self.size, self.batch_size, self.align = size, batch_size, align

    @property
    def images(self) -> list[torch.Tensor]:
        """The ``[3,H,W]`` uint8 images crops are cut from (as sized and trimmed by :meth:`configure`)."""
        return self._sized

    def next_batch(self) -> torch.Tensor:
        """A ``[B,3,size,size]`` float batch in [0, 1]."""
        return self.next_batch_with_positions()[0]

    def next_batch_with_positions(self) -> tuple[torch.Tensor, list[tuple[int, int, int, bool]]]:
        """A batch plus, per crop, ``(image index, top, left, flipped)`` of where it was cut (before the flip)."""
        g = self.generator
        align = getattr(self, "align", 1)
        idx = torch.randint(len(self._sized), (self.batch_size,), generator=g).tolist()
        crops, where = [], []
        for i in idx:
            img = self._sized[i]
            h, w = img.shape[-2:]
            top = int(torch.randint(h - self.size + 1, (1,), generator=g)) // align * align
            left = int(torch.randint(w - self.size + 1, (1,), generator=g)) // align * align
            c = img[:, top : top + self.size, left : left + self.size]
            flips = torch.rand(2, generator=g)
            flipped = bool(flips[0] < 0.5)
            if flipped:
                c = c.flip(-1)
            if self.vflip and flips[1] < 0.5:
                c = c.flip(-2)
            crops.append(c)
            where.append((i, top, left, flipped))
        return torch.stack(crops).float() / 255.0, where

    def state_dict(self) -> dict:
        """What to checkpoint so the next batch after a resume is identical."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


def center_crops(bank: ImageBank, size: int, multiple: int = 64) -> list[torch.Tensor]:
    """Deterministic validation inputs: a centred crop per image (``[1,3,h,w]`` in [0, 1]).

    ``size`` caps each side; sides are rounded down to ``multiple`` so every
    model stride divides them.
    """
    out = []
    for img in bank.images:
        h, w = img.shape[-2:]
        ch = max(multiple, min(size, h) // multiple * multiple)
        cw = max(multiple, min(size, w) // multiple * multiple)
        img = _fit_crop(img, max(ch, cw))
        h, w = img.shape[-2:]
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append(img[None, :, top : top + ch, left : left + cw].float() / 255.0)
    return out
