"""VAE latents of the training images, computed once: the codec stages' latent-alignment targets.

The codec stages freeze the VAE encoder, so ``E(crop)`` never changes for a
given image; encoding every crop again cost about a third of a codec step on
a CPU.  :class:`LatentCache` encodes each training image (and its mirror
image) once; a crop cut at a multiple of 8 pixels then takes its target as
the matching window of the whole image's latent.  Away from the crop's
borders this is the crop's own encoding; at the borders it is the better
target (the encoder sees the real surroundings).  The cache is saved beside
the checkpoints, keyed by a hash of the encoder's weights and the images, so
a resumed run does not encode again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

#: VAE downsampling: latents are 1/8 of the image side.
LATENT_STRIDE = 8


def _key(model: nn.Module, images: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(float(model.vae.config.scaling_factor)).encode())
    for img in images:
        h.update(repr(tuple(img.shape)).encode())
        h.update(img[:, ::37, ::41].contiguous().numpy().tobytes())  # a sample of every image: cheap, specific
    return h.hexdigest()[:16]


class LatentCache:
    """Scaled VAE latents (posterior means) of whole images and their mirror images."""

    def __init__(self, latents: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.latents = latents

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, images: list[torch.Tensor], folder: str | Path | None = None,
              log: Callable[[str], None] | None = print) -> "LatentCache":
        """Encode ``images`` ([3,H,W] uint8, sides multiples of 8) with ``model.vae_encode``, or load them from ``folder``."""
        for img in images:
            if img.shape[-1] % LATENT_STRIDE or img.shape[-2] % LATENT_STRIDE:
                raise ValueError(f"image sides must be multiples of {LATENT_STRIDE}, got {tuple(img.shape)}")
        key = _key(model, images)
        path = Path(folder) / f"latents-{key}.pt" if folder is not None else None
        if path is not None and path.is_file():
            if log:
                log(f"latent targets loaded from {path}")
            return cls(torch.load(path, map_location="cpu"))
        was_training = model.training
        model.eval()
        latents = []
        for i, img in enumerate(images):
            x = img[None].float() / 255.0
            latents.append((model.vae_encode(x)[0].float().cpu(), model.vae_encode(x.flip(-1))[0].float().cpu()))
            if log and (i + 1) % 100 == 0:
                log(f"latent targets: {i + 1}/{len(images)} images encoded")
        model.train(was_training)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(latents, tmp)
            tmp.replace(path)
        return cls(latents)

    def batch(self, where: list[tuple[int, int, int, bool]], size: int) -> torch.Tensor:
        """Latent targets [B, k, size/8, size/8] for crops ``(image, top, left, flipped)`` of side ``size``."""
        s, out = size // LATENT_STRIDE, []
        for i, top, left, flipped in where:
            plain, mirror = self.latents[i]
            r = top // LATENT_STRIDE
            if flipped:
                # The mirrored crop is the mirror image's crop at the mirrored column.
                c = mirror.shape[-1] - left // LATENT_STRIDE - s
                out.append(mirror[:, r : r + s, c : c + s])
            else:
                c = left // LATENT_STRIDE
                out.append(plain[:, r : r + s, c : c + s])
        return torch.stack(out)
