"""The colour layer: the original's local means, sent beside CADC's latent and laid onto the decoded picture.

Why: cadc-tiny's small VAE loses colour locally (saturated regions come back
desaturated, block ΔE 7-8 on Kodak against 2-5 for the classical codecs) and
caps PSNR near 22-23 dB however many latent bytes are spent; a probe showed
that the latent does not carry what is lost, so no decoder-side correction
can recover it (MODEL_CARD.md, "Where the colour goes").  A few hundred bytes
of the original's low-pass, on the other hand, fix exactly that part of the
picture.  The sender sends, per plane of YCbCr (BT.601, full range), the
means of the original over a grid of square cells, quantized; the ground
replaces the decoded picture's cell means by them (the difference, bilinearly
interpolated between cell centres, is added to every pixel), so the latent
keeps the detail and this layer the colour and the coarse brightness.

Layout (all bytes):

| bytes | field |
|---|---|
| 1 | luma cell side in pixels of the picture as coded (0: no luma plane) |
| 1 | chroma cell side (0: no chroma planes) |
| 1 | luma quantization step, quarter code values (1..255 = 0.25..63.75) |
| 1 | chroma quantization step, same units |
| 1 per plane | Laplace scale code of the plane's residuals: scale = 2**((code - 96) / 16) |
| rest | one range-coded stream: each plane's quantized means in raster order, as residuals of the MED |
|  | (LOCO-I median edge) predictor, coded with a zero-mean quantized Laplace of the plane's scale |

Planes are Y, then Cb and Cr (those present).  The layer is deterministic to
decode from its bytes alone; the correction it makes depends on the decoded
picture, so it is computed on the ground from what the decoder produced.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from gateway.codec.cadc.coding import SymbolReader, SymbolWriter
from gateway.codec.image_metrics import cell_counts, cell_means, cell_sums
from gateway.errors import BitstreamError, CodecError

#: Fixed fields before the per-plane scale codes.
_FIXED_BYTES = 4
#: Most cells a plane may hold: bounds what a forged layer can make the decoder allocate (a 64 MP picture
#: at 8-pixel cells), far beyond any budget's worth of colour.
MAX_CELLS_PER_PLANE = 1 << 20
#: Smallest cell side: below it the layer would be an image codec of its own.
MIN_CELL = 4
_SCALE_OFFSET = 96

# BT.601 full-range RGB -> YCbCr (Cb, Cr centred on 0): the JPEG transform.
_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_TO_RGB = np.linalg.inv(_TO_YCC)


@dataclass(frozen=True)
class ColorLayerSettings:
    """What the sender puts in a colour layer: cell sides in pixels of the picture as coded (0: plane absent), steps."""

    luma_cell: int = 0
    chroma_cell: int = 0
    luma_step: float = 4.0
    chroma_step: float = 4.0

    def __post_init__(self) -> None:
        for name in ("luma_cell", "chroma_cell"):
            cell = getattr(self, name)
            if cell != 0 and not MIN_CELL <= cell <= 255:
                raise CodecError(f"colour layer {name} must be 0 (off) or {MIN_CELL}..255 pixels, got {cell}")
        for name in ("luma_step", "chroma_step"):
            code = round(getattr(self, name) * 4)
            if not 1 <= code <= 255 or abs(code / 4 - getattr(self, name)) > 1e-9:
                raise CodecError(f"colour layer {name} must be a multiple of 0.25 in 0.25..63.75, got {getattr(self, name)}")

    @property
    def empty(self) -> bool:
        """Whether the layer carries no plane (then it is not sent at all)."""
        return self.luma_cell == 0 and self.chroma_cell == 0

    def planes(self) -> list[tuple[int, int, float]]:
        """(YCbCr channel, cell side, step) of each plane present, in coding order."""
        out = []
        if self.luma_cell:
            out.append((0, self.luma_cell, self.luma_step))
        if self.chroma_cell:
            out += [(1, self.chroma_cell, self.chroma_step), (2, self.chroma_cell, self.chroma_step)]
        return out


def grid_shape(width: int, height: int, cell: int) -> tuple[int, int]:
    """(rows, cols) of ``cell``-pixel cells covering a picture (partial cells at the right and bottom count)."""
    return -(-height // cell), -(-width // cell)


def _ycc_plane(image: np.ndarray, channel: int) -> np.ndarray:
    rgb = image.astype(np.float32)
    return rgb @ _TO_YCC[channel].astype(np.float32)


def _symbol_range(step: float) -> int:
    # Quantized means lie in [-ceil(256/step), ceil(256/step)]; an MED residual is at most twice that.
    return 2 * math.ceil(256.0 / step) + 2


def _med_residuals(q: np.ndarray) -> np.ndarray:
    """Residuals of the median edge predictor (a: left, b: up, c: up-left; first row/column: the one neighbour)."""
    a = np.zeros_like(q)
    b = np.zeros_like(q)
    c = np.zeros_like(q)
    a[:, 1:], b[1:, :], c[1:, 1:] = q[:, :-1], q[:-1, :], q[:-1, :-1]
    pred = np.where(c >= np.maximum(a, b), np.minimum(a, b),
                    np.where(c <= np.minimum(a, b), np.maximum(a, b), a + b - c))
    pred[0, 1:] = q[0, :-1]
    pred[1:, 0] = q[:-1, 0]
    pred[0, 0] = 0
    return q - pred


def _med_reconstruct(residuals: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_med_residuals` (sequential: each value needs its left neighbour)."""
    rows, cols = residuals.shape
    res = residuals.tolist()
    out = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        row, up, r = out[i], out[i - 1] if i else None, res[i]
        for j in range(cols):
            if i == 0:
                p = row[j - 1] if j else 0
            elif j == 0:
                p = up[0]
            else:
                a, b, c = row[j - 1], up[j], up[j - 1]
                if c >= max(a, b):
                    p = min(a, b)
                elif c <= min(a, b):
                    p = max(a, b)
                else:
                    p = a + b - c
            row[j] = p + r[j]
    return np.asarray(out, dtype=np.int64)


def _scale_code(residuals: np.ndarray) -> int:
    # The maximum-likelihood Laplace scale is the mean absolute residual.
    b = max(float(np.mean(np.abs(residuals))), 0.05)
    return int(np.clip(round(16 * math.log2(b)) + _SCALE_OFFSET, 0, 255))


def _scale(code: int) -> float:
    return 2.0 ** ((code - _SCALE_OFFSET) / 16.0)


class CellSums:
    """A picture's YCbCr sums over 8x8 cells, from which the means over any multiple of 8 follow cheaply.

    The rate controller asks for a colour layer at several λ; every
    policy's cell is a multiple of 8, so the picture is reduced once (a few
    ms at Kodak size) and each layer after that costs about a millisecond.
    Other cell sides are reduced from the picture itself.
    """

    BASE = 8

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        # float32 (a 12 MP picture's planes are 144 MB so, twice that in float64): a sum of 64 values up to 255
        # stays within 1e-3 of exact, and only the sender's quantization reads it.
        ycc = image.astype(np.float32) @ _TO_YCC.T.astype(np.float32)
        self.sums = cell_sums(ycc, self.BASE).astype(np.float64)
        self.counts = cell_counts(image.shape[0], image.shape[1], self.BASE)

    def means(self, channel: int, cell: int) -> np.ndarray:
        """Means of YCbCr ``channel`` over ``cell`` x ``cell`` cells (partial edge cells: their own pixels)."""
        if cell % self.BASE:
            return cell_means(_ycc_plane(self.image, channel).astype(np.float64), cell)
        k = cell // self.BASE
        return cell_sums(self.sums[:, :, channel], k) / cell_sums(self.counts, k)


def encode_color_layer(image: np.ndarray, settings: ColorLayerSettings, sums: CellSums | None = None) -> bytes:
    """The colour layer of an HxWx3 uint8 picture (as coded: downscaled when the stream is); b"" for empty settings.

    ``sums``: the picture's :class:`CellSums`, when the caller makes several layers of one picture.
    """
    if settings.empty:
        return b""
    h, w = image.shape[:2]
    head = bytearray([settings.luma_cell, settings.chroma_cell, round(settings.luma_step * 4),
                      round(settings.chroma_step * 4)])
    writer = SymbolWriter()
    for channel, cell, step in settings.planes():
        rows, cols = grid_shape(w, h, cell)
        if rows * cols > MAX_CELLS_PER_PLANE:
            raise CodecError(f"a colour layer of {cell}-pixel cells on a {w}x{h} picture has {rows * cols} cells a "
                             f"plane (at most {MAX_CELLS_PER_PLANE}); use larger cells")
        if sums is None:
            sums = CellSums(image)
        q = np.rint(sums.means(channel, cell) / step).astype(np.int64)
        residuals = _med_residuals(q)
        code = _scale_code(residuals)
        head.append(code)
        writer.write_laplace(residuals.ravel(), _scale(code), _symbol_range(step))
    return bytes(head) + writer.finish()


@dataclass(frozen=True)
class ColorLayer:
    """A parsed colour layer: the settings it was made with and each plane's dequantized cell means."""

    settings: ColorLayerSettings
    means: tuple[np.ndarray, ...]  # one [rows, cols] float64 array per plane, in :meth:`ColorLayerSettings.planes` order
    size: int  # bytes the layer took


def decode_color_layer(data: bytes, width: int, height: int) -> ColorLayer:
    """Parse a colour layer made for a ``width`` x ``height`` picture; BitstreamError when it is cut or corrupt.

    Sizes are checked against the picture before anything is allocated.
    """
    data = bytes(data)
    if len(data) < _FIXED_BYTES:
        raise BitstreamError(f"colour layer of {len(data)} bytes is shorter than its {_FIXED_BYTES}-byte head")
    luma_cell, chroma_cell, luma_code, chroma_code = data[:_FIXED_BYTES]
    try:
        settings = ColorLayerSettings(luma_cell, chroma_cell, luma_code / 4, chroma_code / 4)
    except CodecError as exc:
        raise BitstreamError(f"colour layer head is corrupt: {exc}") from exc
    planes = settings.planes()
    if not planes:
        raise BitstreamError("colour layer holds no plane: the bitstream is corrupt")
    for _, cell, _ in planes:
        rows, cols = grid_shape(width, height, cell)
        if rows * cols > MAX_CELLS_PER_PLANE:
            raise BitstreamError(f"colour layer's {cell}-pixel cells make {rows * cols} cells on a {width}x{height} "
                                 "picture: the bitstream is corrupt")
    if len(data) < _FIXED_BYTES + len(planes):
        raise BitstreamError("colour layer ends inside its scale codes: the bitstream is truncated")
    codes = data[_FIXED_BYTES:_FIXED_BYTES + len(planes)]
    reader = SymbolReader(data[_FIXED_BYTES + len(planes):])
    means = []
    for (_, cell, step), code in zip(planes, codes):
        rows, cols = grid_shape(width, height, cell)
        residuals = reader.read_laplace(rows * cols, _scale(code), _symbol_range(step)).reshape(rows, cols)
        means.append(_med_reconstruct(residuals.astype(np.int64)).astype(np.float64) * step)
    return ColorLayer(settings, tuple(means), len(data))


def _upsample(grid: np.ndarray, height: int, width: int, cell: int) -> torch.Tensor:
    """A cell grid bilinearly interpolated between cell centres to the picture's pixels (float32 [H, W])."""
    rows, cols = grid.shape
    t = torch.from_numpy(grid.astype(np.float32))[None, None]
    up = torch.nn.functional.interpolate(t, size=(rows * cell, cols * cell), mode="bilinear", align_corners=False)
    return up[0, 0, :height, :width]


def apply_color_layer(image: np.ndarray, layer: ColorLayer) -> np.ndarray:
    """``image`` (the decoded HxWx3 uint8 picture) with its cell means replaced by the layer's."""
    h, w = image.shape[:2]
    ycc = torch.from_numpy(image.astype(np.float32)) @ torch.from_numpy(_TO_YCC.T.astype(np.float32))
    for (channel, cell, _), target in zip(layer.settings.planes(), layer.means):
        if target.shape != grid_shape(w, h, cell):
            raise CodecError(f"colour layer plane of {target.shape} cells does not fit a {w}x{h} picture")
        current = cell_means(ycc[:, :, channel].numpy().astype(np.float64), cell)
        ycc[:, :, channel] += _upsample(target - current, h, w, cell)
    rgb = ycc @ torch.from_numpy(_TO_RGB.T.astype(np.float32))
    return rgb.round_().clamp_(0, 255).to(torch.uint8).numpy()


@dataclass(frozen=True)
class ColorLayerRule:
    """One row of a :class:`ColorLayerPolicy`: the settings for every λ from ``min_lam`` up (to the previous row's)."""

    min_lam: float
    settings: ColorLayerSettings


class ColorLayerPolicy:
    """Which colour layer the sender makes at each λ (the model config's ``codec.color_layer`` rows).

    Tied to λ, the slope of the rate–distortion trade-off the latent is coded
    at, so the layer gets finer exactly where latent bytes have stopped paying:
    the rate controller's λ search then splits a budget between the two
    without a knob of its own (a coarser layer at a higher λ also keeps the
    bitstream's size monotone in the λ code).  Cell sides are in pixels of the
    picture as coded.  A row without planes means no layer from its λ up; no
    rows at all: never a layer.
    """

    def __init__(self, rules: list[ColorLayerRule]) -> None:
        self.rules = sorted(rules, key=lambda r: -r.min_lam)

    @classmethod
    def from_config(cls, rows: list[dict]) -> "ColorLayerPolicy":
        """From config rows ``{min_lam, luma_cell, chroma_cell, luma_step, chroma_step}`` (CodecError when malformed)."""
        rules = []
        for row in rows:
            row = dict(row)
            try:
                min_lam = float(row.pop("min_lam"))
                rules.append(ColorLayerRule(min_lam, ColorLayerSettings(**row)))
            except (KeyError, TypeError, ValueError) as exc:
                raise CodecError(f"colour layer rule {row} is malformed ({exc}); each needs min_lam and may set "
                                 "luma_cell, chroma_cell, luma_step, chroma_step") from exc
        return cls(rules)

    @property
    def fingerprint(self) -> str:
        """Four hex digits naming the rows (the model id does not cover them: they are sender policy, not
        weights), so measurements made under other rows are not mistaken for these."""
        text = ";".join(f"{r.min_lam:g}:{r.settings}" for r in self.rules)
        return hashlib.blake2b(text.encode(), digest_size=2).hexdigest()

    def settings_for(self, lam: float) -> ColorLayerSettings:
        """The settings of the first rule (highest ``min_lam`` first) whose ``min_lam`` is at most ``lam``."""
        for rule in self.rules:
            if lam >= rule.min_lam:
                return rule.settings
        return ColorLayerSettings()
