"""Training images: decoded when needed through a bounded cache, served as random crops and flips.

An :class:`ImageBank` knows its files and their sizes (read from the file
headers) and decodes an image only when a crop needs it; decoded images are
kept in an LRU cache bounded in bytes (``data.cache_mb`` of the recipe), so
a process's RAM does not grow with the data set, and every DDP rank holds
only its own bounded cache.  There is no loader process: on a 2-core machine
worker processes would only steal the cores the model needs, and on a GPU
host a decode per crop is small beside a training step.

All randomness comes from one ``torch.Generator`` owned by :class:`CropSampler`
(crop positions are drawn from the image sizes alone, before any decoding);
saving its state (see :meth:`CropSampler.state_dict`) makes the data order
resume exactly after a restart.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gateway.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
#: Decoded images kept per process when the recipe does not say (data.cache_mb).
DEFAULT_CACHE_MB = 1024.0


def list_images(folders: Iterable[str | Path]) -> list[Path]:
    """Every image file directly inside ``folders``, sorted so the order is reproducible."""
    paths: list[Path] = []
    for folder in folders:
        d = Path(folder)
        if not d.is_dir():
            raise ConfigError(f"image folder not found: {d}")
        paths.extend(sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    return paths


def pick_images(folders: Iterable[str | Path], limit: int, seed: int) -> list[Path]:
    """``limit`` pictures drawn round-robin from ``folders``, each shuffled with ``seed`` (reproducible samples
    for the tools that tune on training pictures: Kodak is for evaluation only and is refused)."""
    pools = []
    for folder in folders:
        if "kodak" in str(folder).lower():
            raise ConfigError(f"{folder}: Kodak is for evaluation only; tune on training pictures")
        files = list_images([folder])
        if not files:
            raise ConfigError(f"{folder}: no pictures ({', '.join(sorted(IMAGE_SUFFIXES))})")
        random.Random(f"{seed}:{folder}").shuffle(files)
        pools.append(files)
    out: list[Path] = []
    while len(out) < limit and any(pools):
        for pool in pools:
            if pool and len(out) < limit:
                out.append(pool.pop(0))
    return out


def load_image(path: Path) -> torch.Tensor:
    """An image file as a ``[3,H,W]`` uint8 tensor (RGB)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ByteLRU:
    """A thread-safe LRU mapping whose values are tensors (or tuples of them), bounded by their total bytes."""

    def __init__(self, max_bytes: float) -> None:
        self.max_bytes = max(0.0, float(max_bytes))
        self._items: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(ByteLRU._size(v) for v in value)
        return 0

    def get(self, key: object) -> object | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: object, value: object) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return  # larger than the whole cache: serve it, keep nothing
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old

    @property
    def bytes(self) -> int:
        """Bytes held now (never above ``max_bytes``)."""
        return self._bytes


class ImageBank(Sequence[torch.Tensor]):
    """The images of some folders: sizes known up front, pixels decoded on access through a bounded cache.

    ``bank[i]`` is image ``i`` as a ``[3,H,W]`` uint8 tensor; :meth:`size`
    is its ``(H, W)`` without decoding it.
    """

    def __init__(self, folders: Sequence[str | Path] | str | Path, limit: int | None = None,
                 cache_mb: float = DEFAULT_CACHE_MB) -> None:
        if isinstance(folders, (str, Path)):
            folders = [folders]
        paths = list_images(folders)
        if limit is not None:
            paths = paths[:limit]
        if not paths:
            raise ConfigError(f"no images found in {list(map(str, folders))}")
        self.paths = paths
        self._sizes: list[tuple[int, int]] = []
        for p in paths:
            try:
                with Image.open(p) as im:  # reads the header only
                    w, h = im.size
            except (OSError, Image.DecompressionBombError) as exc:
                raise ConfigError(f"training image {p} cannot be read: {exc}") from exc
            self._sizes.append((h, w))
        self._memory: list[torch.Tensor] | None = None
        self._cache = ByteLRU(cache_mb * 2**20)

    @classmethod
    def from_tensors(cls, images: Sequence[torch.Tensor]) -> "ImageBank":
        """A bank over in-memory ``[3,H,W]`` uint8 tensors (tests, generated data)."""
        bank = cls.__new__(cls)
        bank.paths = [Path(f"<memory:{i}>") for i in range(len(images))]
        bank._memory = [t.contiguous() for t in images]
        bank._sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in bank._memory]
        bank._cache = ByteLRU(0)
        return bank

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._memory is not None:
            return self._memory[index]
        img = self._cache.get(index)
        if img is None:
            img = load_image(self.paths[index])
            if tuple(img.shape[-2:]) != self._sizes[index]:
                raise ConfigError(f"training image {self.paths[index]} changed size while training; restart the run")
            self._cache.put(index, img)
        return img  # type: ignore[return-value]

    @property
    def images(self) -> "ImageBank":
        """The images as a sequence (decoded on access); kept for callers of the eager bank."""
        return self

    def size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of image ``index``, without decoding it."""
        return self._sizes[index]

    def fingerprint(self, index: int) -> str:
        """What identifies image ``index``'s pixels cheaply: file name, size and modification time (memory: a hash)."""
        if self._memory is not None:
            img = self._memory[index]
            sample = img[:, ::37, ::41].contiguous().numpy().tobytes()
            return f"{tuple(img.shape)}:{hashlib.sha256(sample).hexdigest()[:16]}"
        st = self.paths[index].stat()
        return f"{self.paths[index].resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _fit_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The ``(H, W)`` :func:`fit_crop` gives an ``h`` x ``w`` image for crops of ``size``."""
    if min(h, w) >= size:
        return h, w
    s = size / min(h, w)
    return max(size, round(h * s)), max(size, round(w * s))


def fit_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale an image whose short side is below ``size`` so a crop fits."""
    h, w = img.shape[-2:]
    nh, nw = _fit_size(h, w, size)
    if (nh, nw) == (h, w):
        return img
    out = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


class PreparedImages(Sequence[torch.Tensor]):
    """A bank's images as crops are cut from them: upscaled to fit the largest crop, trimmed to the alignment.

    Sizes come from the bank without decoding; pixels are prepared on access.
    """

    def __init__(self, bank: ImageBank, fit: int, trim: int = 1) -> None:
        self.bank, self.fit, self.trim = bank, fit, trim

    def __len__(self) -> int:
        return len(self.bank)

    def size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of prepared image ``index``."""
        h, w = _fit_size(*self.bank.size(index), self.fit)
        return h // self.trim * self.trim, w // self.trim * self.trim

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        img = fit_crop(self.bank[index], self.fit)
        h, w = self.size(index)
        return img[:, :h, :w]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def fingerprint(self, index: int) -> str:
        """The bank's fingerprint of the source image plus this preparation."""
        return f"{self.bank.fingerprint(index)}@{self.fit}/{self.trim}"


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
        self.align = 1
        self.generator = torch.Generator().manual_seed(seed * 1000 + rank)
        # Small images are upscaled (when decoded) for the largest crop any stage will ask for.
        self._prepared = PreparedImages(bank, max(size, max_size or 0))

    def configure(self, size: int, batch_size: int, align: int = 1) -> None:
        """Change crop size and batch (per training stage); the random stream continues unchanged.

        ``align`` > 1 puts every crop at a multiple of ``align`` pixels of an
        image trimmed to a multiple of ``align`` (so a horizontally flipped
        crop sits at a multiple too): crops then line up with the grid of a
        latent computed once per image (:class:`gateway.training.latents.LatentCache`).
        Trimming, once asked for, stays for later stages.
        """
        self._prepared.fit = max(self._prepared.fit, size)
        if align > 1:
            self._prepared.trim = max(self._prepared.trim, align)
        self.size, self.batch_size, self.align = size, batch_size, align

    @property
    def images(self) -> PreparedImages:
        """The ``[3,H,W]`` uint8 images crops are cut from (as sized and trimmed by :meth:`configure`), lazily."""
        return self._prepared

    def next_batch(self) -> torch.Tensor:
        """A ``[B,3,size,size]`` float batch in [0, 1]."""
        return self.next_batch_with_positions()[0]

    def next_batch_with_positions(self) -> tuple[torch.Tensor, list[tuple[int, int, int, bool]]]:
        """A batch plus, per crop, ``(image index, top, left, flipped)`` of where it was cut (before the flip)."""
        g = self.generator
        align = self.align
        idx = torch.randint(len(self._prepared), (self.batch_size,), generator=g).tolist()
        crops, where = [], []
        for i in idx:
            h, w = self._prepared.size(i)
            top = int(torch.randint(h - self.size + 1, (1,), generator=g)) // align * align
            left = int(torch.randint(w - self.size + 1, (1,), generator=g)) // align * align
            c = self._prepared[i][:, top : top + self.size, left : left + self.size]
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
    for img in bank:
        h, w = img.shape[-2:]
        ch = max(multiple, min(size, h) // multiple * multiple)
        cw = max(multiple, min(size, w) // multiple * multiple)
        img = fit_crop(img, max(ch, cw))
        h, w = img.shape[-2:]
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append(img[None, :, top : top + ch, left : left + cw].float() / 255.0)
    return out
