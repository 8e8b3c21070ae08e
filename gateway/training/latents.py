"""VAE latents of the training images, computed once: the codec stages' latent-alignment targets.

The codec stages freeze the VAE encoder, so ``E(crop)`` never changes for a
given image; encoding every crop again cost about a third of a codec step on
a CPU.  :class:`LatentCache` encodes each training image (and its mirror
image) once; a crop cut at a multiple of 8 pixels then takes its target as
the matching window of the whole image's latent.  Away from the crop's
borders this is the crop's own encoding; at the borders it is the better
target (the encoder sees the real surroundings).

The latents live on disk, one file per image in ``latents-<key>/`` beside
the checkpoints (the key hashes the encoder's weights and the images'
identities), and are read back through a bounded cache, so memory does not
grow with the data set.  Under DDP each rank encodes its share of the images
and all of them read every file (the run folder is shared by the ranks of
one host).  A resumed run finds the files and encodes nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from gateway.training.data import ByteLRU

#: VAE downsampling: latents are 1/8 of the image side.
LATENT_STRIDE = 8
#: Latents kept in memory per process (they are read back from their files when evicted).
CACHE_BYTES = 256 * 2**20


def _image_id(images: Sequence[torch.Tensor], index: int) -> str:
    """What identifies image ``index``: its fingerprint when the sequence has them, else a sample of its pixels."""
    fingerprint = getattr(images, "fingerprint", None)
    if fingerprint is not None:
        return str(fingerprint(index))
    img = images[index]
    return f"{tuple(img.shape)}:{img[:, ::37, ::41].contiguous().numpy().tobytes().hex()}"


def _key(model: nn.Module, images: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(repr(float(model.vae.config.scaling_factor)).encode())
    for i in range(len(images)):
        h.update(_image_id(images, i).encode())
    return h.hexdigest()[:16]


def _save_atomic(value: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(value, tmp)
    tmp.replace(path)


class LatentCache:
    """Scaled VAE latents (posterior means) of whole images and their mirror images, one file per image."""

    def __init__(self, folder: Path | None, count: int, latents: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.folder = folder
        self.count = count
        self._memory = latents  # no folder: everything in memory (tests, runs without an output folder)
        self._cache = ByteLRU(CACHE_BYTES)

    def __len__(self) -> int:
        return self.count

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, images: Sequence[torch.Tensor], folder: str | Path | None = None,
              log: Callable[[str], None] | None = print, rank: int = 0, world: int = 1) -> "LatentCache":
        """Encode ``images`` ([3,H,W] uint8, sides multiples of 8) with ``model.vae_encode`` into ``folder``.

        Images whose file is already there are not encoded again.  Rank
        ``rank`` of ``world`` encodes images ``rank, rank + world, ...``;
        under DDP every rank waits for all of them before training goes on.
        """
        size_of = getattr(images, "size", None)
        for i in range(len(images)):
            h, w = size_of(i) if size_of is not None else images[i].shape[-2:]
            if w % LATENT_STRIDE or h % LATENT_STRIDE:
                raise ValueError(f"image sides must be multiples of {LATENT_STRIDE}, got {(h, w)}")
        key = _key(model, images)
        root = Path(folder) / f"latents-{key}" if folder is not None else None
        memory: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None if root is not None else {}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(rank, len(images), world) if root is None or not (root / f"{i}.pt").is_file()]
        if todo and log:
            log(f"latent targets: encoding {len(todo)} of {len(images)} images" + (f" into {root}" if root else ""))
        elif log and root is not None:
            log(f"latent targets found in {root}")
        was_training = model.training
        model.eval()
        for n, i in enumerate(todo):
            x = images[i][None].float() / 255.0
            x = x.to(next(model.vae.parameters()).device)
            pair = (model.vae_encode(x)[0].float().cpu(), model.vae_encode(x.flip(-1))[0].float().cpu())
            if root is None:
                memory[i] = pair  # type: ignore[index]
            else:
                _save_atomic(pair, root / f"{i}.pt")
            if log and (n + 1) % 100 == 0:
                log(f"latent targets: {n + 1}/{len(todo)} images encoded")
        model.train(was_training)
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()
        return cls(root, len(images), memory)

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, mirror image's latent) of image ``index``."""
        if self._memory is not None:
            return self._memory[index]
        hit = self._cache.get(index)
        if hit is None:
            assert self.folder is not None
            hit = torch.load(self.folder / f"{index}.pt", map_location="cpu")
            self._cache.put(index, hit)
        return hit  # type: ignore[return-value]

    def batch(self, where: list[tuple[int, int, int, bool]], size: int) -> torch.Tensor:
        """Latent targets [B, k, size/8, size/8] for crops ``(image, top, left, flipped)`` of side ``size``."""
        s, out = size // LATENT_STRIDE, []
        for i, top, left, flipped in where:
            plain, mirror = self.pair(i)
            r = top // LATENT_STRIDE
            if flipped:
                # The mirrored crop is the mirror image's crop at the mirrored column.
                c = mirror.shape[-1] - left // LATENT_STRIDE - s
                out.append(mirror[:, r : r + s, c : c + s])
            else:
                c = left // LATENT_STRIDE
                out.append(plain[:, r : r + s, c : c + s])
        return torch.stack(out)
