"""The decoder's synthesis in tiles: ŷ -> g_s -> l_T -> UNet -> l_0 -> VAE decoder -> pixels.

The one-step UNet attends over its whole input, so its cost grows with the
square of the picture, and every stage's activations grow with it.  Here each
stage runs on tiles of a size set in the bundle config (``codec.unet_tile``,
``codec.vae_tile``, in latent positions, 1/8 of the image side), so time grows
linearly with the pixels and the working set stays that of one tile:

* **g_s** is a plain conv net: each l_T tile is computed from the ŷ it needs
  plus a halo (:func:`synthesis_halo`), which gives exactly the values a
  whole-picture pass would, so no blending is needed at this stage;
* **the UNet** runs on overlapping l_T tiles; the l_0 tiles are blended into
  one l_0 (8 channels at 1/8 of the side: half a byte per pixel) with weights
  that cross-fade over the overlap (:func:`~.tile_grid.blend_weights`);
* **the VAE decoder** (``model.decode_pixels``: the VAE decoder, then the
  colour correction when the model has one) runs on overlapping l_0 tiles,
  blended in pixel space one row of tiles at a time: a row is turned into
  uint8 as soon as the next row can no longer touch it, so only one row of
  tiles is ever held in float.  The colour correction works per tile, from
  the tile's l_0 and the block means of the tile's own decoded pixels: it is
  local (two 3x3 convs at l_0's resolution, then a bilinear upsampling), so
  away from a tile's edge it is what the whole-picture pass computes, and at
  the edge the blend weights fade the tile out; one tile is exactly the
  untiled ``decode_pixels``;
* **x̂_aux** (for BFATC's caption, or the rate controller's distortion
  proxy) is exact per tile with a halo, like g_s.

A picture whose latent fits one tile takes exactly the untiled path: the
same calls on the same tensors as before tiling existed.  ``docs/tiling.md``
has the design, the measurements behind the tile sizes and what seams look
like.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from gateway.codec.cadc.config import CodecSection
from gateway.codec.cadc.tile_grid import Span, blend_weights, cores, spans
from gateway.errors import ConfigError

#: Image side / latent side: l_T, l_0 and the VAE decoder's input are at 1/8 of the picture.
LATENT_SCALE = 8
#: Latent positions of context the auxiliary decoder needs for exact output (its receptive field is ~2).
AUX_HALO = 3
#: The captioner (BLIP) sees a few hundred pixels a side: a tiled x̂_aux is box-averaged to at most this many.
CAPTION_PIXELS = 1 << 20
#: g_s makes l_T in exact blocks of at most this many latent rows by :data:`BAND_PIECE` columns (2048 x 4096
#: pixels), top to bottom as the rows of UNet tiles reach them: a block's halo costs little, and the rows
#: held at a time are a few megabytes however large the picture.
BAND_ROWS = 256
BAND_PIECE = 512


@dataclass(frozen=True)
class TileSettings:
    """Decoder tile sizes and overlaps, in latent positions (the bundle config's ``codec`` keys)."""

    unet_tile: int
    unet_overlap: int
    vae_tile: int
    vae_overlap: int
    vae_single: int = 0  #: a latent fitting this on both sides takes one VAE tile (0: vae_tile)

    @classmethod
    def of(cls, cfg: CodecSection) -> "TileSettings":
        return cls(cfg.unet_tile, cfg.unet_tile_overlap, cfg.vae_tile, cfg.vae_tile_overlap, cfg.vae_single_tile)


def synthesis_halo(cfg: CodecSection) -> int:
    """ŷ positions of context around a region that make g_s's output there exact.

    g_s's receptive field, in ŷ positions: a 3x3 conv and the residual blocks
    at ŷ's size, one 3x3 conv per x2 upsampling at that stage's size, then a
    conv, the residual blocks and the output conv at l_T's size
    (:class:`~gateway.codec.cadc.layers.SynthesisTransform`); half a position
    more for where an l_T position sits inside its ŷ cell.
    """
    n_up = cfg.n_down - 3
    blocks = 2 * cfg.transform_blocks
    reach = 1 + blocks + sum(0.5**i for i in range(n_up)) + (2 + blocks) / 2**n_up
    return math.ceil(reach + 0.5)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[3, H, W] pixels nominally in [0, 1] -> HxWx3 uint8, rounding half up (the decoder's one conversion)."""
    return (pixels.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


class TiledSynthesis:
    """One picture's synthesis from ŷ, in tiles (a single tile: the untiled path).

    ``pretrained`` wraps every call of the pretrained parts (text encoder,
    captioner, UNet, VAE), e.g. an autocast context for a half-precision
    decoder; the default does nothing.
    """

    def __init__(
        self,
        model: Any,
        y_hat: torch.Tensor,
        inv_gain: torch.Tensor,
        coded_size: tuple[int, int],
        settings: TileSettings,
        pretrained: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.model = model
        self.y_hat = y_hat
        self.inv_gain = inv_gain
        self.width, self.height = coded_size
        self.settings = settings
        self.pretrained = pretrained
        cfg = model.config.codec
        #: l_T positions per ŷ position (g_s's upsampling).
        self.factor = cfg.y_downsample // LATENT_SCALE
        self.halo = synthesis_halo(cfg)
        hy, wy = y_hat.shape[-2:]
        self.latent_height, self.latent_width = hy * self.factor, wy * self.factor
        # UNet tiles must start on whole ŷ positions and on the UNet's own downsampling grid.
        unet_factor = 2 ** (len(model.unet.config.block_out_channels) - 1)
        align = math.lcm(self.factor, unet_factor)
        for name, value in (("unet_tile", settings.unet_tile), ("unet_tile_overlap", settings.unet_overlap)):
            if value % align:
                raise ConfigError(
                    f"codec.{name}={value} must be a multiple of {align} for this model "
                    f"(g_s upsamples ŷ by {self.factor}, the UNet downsamples by {unet_factor})"
                )
        self.unet_rows = spans(self.latent_height, settings.unet_tile, settings.unet_overlap, align)
        self.unet_cols = spans(self.latent_width, settings.unet_tile, settings.unet_overlap, align)
        single = settings.vae_single or settings.vae_tile
        whole = single and self.latent_height <= single and self.latent_width <= single
        vae_tile = 0 if whole else settings.vae_tile
        self.vae_rows = spans(self.latent_height, vae_tile, settings.vae_overlap)
        self.vae_cols = spans(self.latent_width, vae_tile, settings.vae_overlap)
        self._whole_latent: torch.Tensor | None = None  # untiled: l_T computed once for x̂_aux and the UNet
        self._bands = cores(spans(self.latent_height, BAND_ROWS, 0, self.factor), self.factor)
        self._held: list[tuple[Span, torch.Tensor]] = []  # l_T blocks of whole rows, top to bottom

    # -- what the picture is cut into ------------------------------------------------------------
    @property
    def unet_grid(self) -> tuple[int, int]:
        """(rows, columns) of UNet tiles; (1, 1): the untiled path."""
        return len(self.unet_rows), len(self.unet_cols)

    @property
    def vae_grid(self) -> tuple[int, int]:
        """(rows, columns) of VAE decoder tiles."""
        return len(self.vae_rows), len(self.vae_cols)

    def _tiles(self, rows: tuple[Span, ...], cols: tuple[Span, ...]) -> Iterator[tuple[Span, Span]]:
        for r in rows:
            for c in cols:
                yield r, c

    # -- exact pieces ------------------------------------------------------------------------------
    def latent(self, rows: Span | None = None, cols: Span | None = None) -> torch.Tensor:
        """l_T = g_s(ŷ / gain) over ``rows`` x ``cols`` (latent positions; None: all), exactly as the
        whole-picture pass computes it there: g_s runs on the ŷ the region needs plus a halo."""
        if rows is None and cols is None and self._whole_latent is not None:
            return self._whole_latent
        rows = rows or Span(0, self.latent_height)
        cols = cols or Span(0, self.latent_width)
        f = self.factor
        y_rows = Span(rows.start // f, -(-rows.stop // f)).widened(self.halo, self.y_hat.shape[-2])
        y_cols = Span(cols.start // f, -(-cols.stop // f)).widened(self.halo, self.y_hat.shape[-1])
        y_part = self.y_hat[..., y_rows.start : y_rows.stop, y_cols.start : y_cols.stop]
        l_t = self.model.synthesize_latent(y_part, self.inv_gain)
        top, left = rows.start - y_rows.start * f, cols.start - y_cols.start * f
        return l_t[..., top : top + rows.size, left : left + cols.size]

    def latent_rows(self, rows: Span) -> torch.Tensor:
        """l_T over ``rows`` and every column (exact), for callers that move down the picture.

        Made in blocks of :data:`BAND_ROWS` rows (each in pieces of at most
        :data:`BAND_PIECE` columns); blocks wholly above ``rows`` are let go.
        """
        self._held = [(band, t) for band, t in self._held if band.stop > rows.start]
        for band in self._bands:
            if band.start < rows.stop and band.stop > rows.start and all(band != b for b, _ in self._held):
                pieces = cores(spans(self.latent_width, BAND_PIECE, 0, self.factor), self.factor)
                self._held.append((band, torch.cat([self.latent(band, cols) for cols in pieces], dim=-1)))
        parts = [
            t[..., max(rows.start, band.start) - band.start : min(rows.stop, band.stop) - band.start, :]
            for band, t in self._held
            if band.start < rows.stop and band.stop > rows.start
        ]
        return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]

    def aux_cores(self) -> Iterator[tuple[Span, Span, torch.Tensor]]:
        """(pixel rows, pixel columns, x̂_aux there) over a partition of the picture into the UNet tiles' cores.

        x̂_aux is exact: each core is decoded with :data:`AUX_HALO` latent
        positions of context.  Pieces are not cropped to the coded size.
        """
        s = LATENT_SCALE
        for rows, cols in self._tiles(cores(self.unet_rows), cores(self.unet_cols)):
            r = rows.widened(AUX_HALO, self.latent_height)
            c = cols.widened(AUX_HALO, self.latent_width)
            x_aux = self.model.aux_reconstruction(self.latent(r, c))
            top, left = (rows.start - r.start) * s, (cols.start - c.start) * s
            yield rows.scaled(s), cols.scaled(s), x_aux[..., top : top + rows.size * s, left : left + cols.size * s]

    def aux_squared_error(self, pixels: Callable[[Span, Span], torch.Tensor]) -> float:
        """Mean squared error of x̂_aux (clamped to [0, 1]) against the picture, over the coded size.

        ``pixels(rows, cols)`` gives the picture there as [1, 3, h, w] in [0, 1].
        """
        h, w = self.height, self.width
        if self.unet_grid == (1, 1):
            x_aux = self.model.aux_reconstruction(self.latent())[..., :h, :w].clamp(0, 1)
            return float(torch.mean((x_aux - pixels(Span(0, h), Span(0, w))) ** 2))
        total = 0.0
        for rows, cols, x_aux in self.aux_cores():
            rows, cols = Span(rows.start, min(rows.stop, h)), Span(cols.start, min(cols.stop, w))
            if rows.size <= 0 or cols.size <= 0:
                continue
            err = x_aux[..., : rows.size, : cols.size].clamp(0, 1) - pixels(rows, cols)
            total += float(torch.sum(err.double() ** 2))
        return total / (3 * h * w)

    def caption_input(self) -> torch.Tensor:
        """x̂_aux for the captioner: the whole one (untiled), or box-averaged to at most :data:`CAPTION_PIXELS`."""
        h, w = self.height, self.width
        if self.unet_grid == (1, 1):
            return self.model.aux_reconstruction(self.latent())[..., :h, :w]
        s = LATENT_SCALE
        down = 1
        while down < s and (self.latent_height * s // down) * (self.latent_width * s // down) > CAPTION_PIXELS:
            down *= 2
        out = None
        for rows, cols, x_aux in self.aux_cores():
            small = F.avg_pool2d(x_aux, down) if down > 1 else x_aux
            if out is None:
                out = small.new_zeros(1, 3, self.latent_height * s // down, self.latent_width * s // down)
            out[..., rows.start // down : rows.stop // down, cols.start // down : cols.stop // down] = small
        assert out is not None
        return out[..., : -(-h // down), : -(-w // down)]

    # -- the stages -------------------------------------------------------------------------------
    def denoise(self, text: torch.Tensor, timings: dict[str, float]) -> torch.Tensor:
        """l_0 for the whole picture: the one-step UNet on each l_T tile, blended."""
        if self.unet_grid == (1, 1):
            t0 = _now()
            l_t = self.latent()
            t1 = _now()
            with self.pretrained():
                l0 = self.model.denoise(l_t, text)
            _add(timings, "g_s", t1 - t0)
            _add(timings, "unet", _now() - t1)
            return l0
        ov = self.settings.unet_overlap
        w_rows = blend_weights(self.unet_rows, self.latent_height, ov)
        w_cols = blend_weights(self.unet_cols, self.latent_width, ov)
        l0 = None
        for (rows, wr) in zip(self.unet_rows, w_rows):
            t0 = _now()
            band = self.latent_rows(rows)  # g_s runs on large blocks: its halo is paid per block, not per tile
            _add(timings, "g_s", _now() - t0)
            for (cols, wc) in zip(self.unet_cols, w_cols):
                t1 = _now()
                with self.pretrained():
                    tile = self.model.denoise(band[..., cols.start : cols.stop].contiguous(), text)
                if l0 is None:
                    l0 = tile.new_zeros(1, tile.shape[1], self.latent_height, self.latent_width)
                l0[..., rows.start : rows.stop, cols.start : cols.stop] += tile * _outer(wr, wc, tile)
                _add(timings, "unet", _now() - t1)
            del band
        self._held = []
        assert l0 is not None
        return l0

    def _decode_pixels(self, l0: torch.Tensor) -> torch.Tensor:
        """``model.decode_pixels`` of one latent tile, the VAE under ``pretrained``."""
        return self.model.decode_pixels(l0.contiguous(memory_format=torch.channels_last), self.pretrained).float()

    def pixels(self, l0: torch.Tensor, timings: dict[str, float]) -> np.ndarray:
        """The coded-size HxWx3 uint8 picture from l_0: the VAE decoder on each tile, blended row by row."""
        h, w = self.height, self.width
        t0 = _now()
        if self.vae_grid == (1, 1):
            x_hat = self._decode_pixels(l0)[..., :h, :w]
            _add(timings, "vae_decode", _now() - t0)
            return to_uint8(x_hat[0])
        s, ov = LATENT_SCALE, self.settings.vae_overlap * LATENT_SCALE
        rows = [r.scaled(s) for r in self.vae_rows]
        cols = [c.scaled(s) for c in self.vae_cols]
        w_rows = blend_weights(rows, self.latent_height * s, ov)
        w_cols = blend_weights(cols, self.latent_width * s, ov)
        image = np.empty((h, w, 3), dtype=np.uint8)
        carry: torch.Tensor | None = None  # rows of the previous tile row the current one overlaps
        for i, (r, wr) in enumerate(zip(rows, w_rows)):
            acc: torch.Tensor | None = None
            for c, wc, lat in zip(cols, w_cols, self.vae_cols):
                part = l0[..., r.start // s : r.stop // s, lat.start : lat.stop]
                tile = self._decode_pixels(part)[0]
                if tile.shape[-2:] != (r.size, c.size):
                    raise ConfigError(
                        f"the VAE decoder turned a {part.shape[-2]}x{part.shape[-1]} latent into "
                        f"{tile.shape[-2]}x{tile.shape[-1]} pixels; tiling needs {LATENT_SCALE}x upsampling"
                    )
                if acc is None:
                    acc = tile.new_zeros(3, r.size, self.latent_width * s)
                    if carry is not None:
                        acc[:, : carry.shape[1]] = carry
                acc[:, :, c.start : c.stop] += tile * _outer(wr, wc, tile)
            assert acc is not None
            done = rows[i + 1].start if i + 1 < len(rows) else r.stop  # the next row adds nothing above this
            top, bottom = r.start, min(done, h)
            if bottom > top:
                image[top:bottom] = to_uint8(acc[:, : bottom - top, :w])
            carry = acc[:, done - r.start :].clone()
        _add(timings, "vae_decode", _now() - t0)
        return image

    def run(self, timings: dict[str, float]) -> tuple[np.ndarray, list[str] | None]:
        """(coded-size uint8 picture, captions or None); adds stage times (ms) to ``timings``."""
        model = self.model
        if self.unet_grid == (1, 1):
            t0 = _now()
            self._whole_latent = self.latent()
            _add(timings, "g_s", _now() - t0)
        t0 = _now()
        # x̂_aux only feeds the BFATC captioner: without captions (cadc-tiny) it is not computed.
        needs_aux = model.aux_decoder is not None and model.text.mode == "caption"
        x_aux = self.caption_input() if needs_aux else None
        t1 = _now()
        with self.pretrained():
            text, captions = model.text(x_aux, 1, self.y_hat.device, self.y_hat.dtype)
        _add(timings, "aux_decoder", t1 - t0)
        _add(timings, "text", _now() - t1)
        l0 = self.denoise(text, timings)
        self._whole_latent = None
        return self.pixels(l0, timings), captions


def _outer(rows: np.ndarray, cols: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """The 2-D blend weights of one tile (outer product of its row and column weights), as ``like``."""
    return torch.from_numpy(np.outer(rows, cols)).to(device=like.device, dtype=like.dtype)


def _now() -> float:
    return time.perf_counter()


def _add(timings: dict[str, float], stage: str, seconds: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + seconds * 1e3
