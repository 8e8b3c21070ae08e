"""The encoder's analysis transform ``g_a`` in tiles: y for a picture of any size, with a bounded working set.

``g_a`` is a stack of stride-2 convs (with residual blocks after some, and
at y's size, 1/32 or 1/64 of the side).  Its first stages, at 1/2 to 1/16 of the side, hold
nearly all of its activations and time: run on a whole 24 MP picture they
would need gigabytes (the float copy of the picture alone is 12 bytes a
pixel).  Here those stages run on tiles of at most ``codec.analysis_tile``
pixels a side, each read from the uint8 picture with :func:`analysis_halo`
pixels of context, enough that the tile's output is what the whole-picture
pass computes there (the same arithmetic; only the float rounding of a conv
library's blocking may differ); the remaining stages run once on the
assembled 1/16-size features (one byte per pixel of the picture).

A picture whose padded size fits one tile takes exactly the untiled path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gateway.codec.cadc.tile_grid import Span, cores, spans

#: Stride-2 stages of g_a run per tile (down to 1/16 of the side); the rest run on the whole 1/16-size map.
FRONT_STAGES = 4
#: Stride of the tiled stages: tiles start on multiples of this many pixels.
FRONT_STRIDE = 2**FRONT_STAGES


def analysis_halo(g_a: nn.Module) -> int:
    """Pixels of context around a tile: what the tiled stages reach, rounded up to the stride, plus one
    output position of margin.  Plain stages reach 2 + 2 + 4 + 8 = 16 pixels (a 5x5 stride-2 conv, then
    3x3 stride-2 convs at 1/2, 1/4 and 1/8 of the side): a 32-pixel halo; stage blocks widen it."""
    reach = g_a.reach(FRONT_STAGES)
    return -(-reach // FRONT_STRIDE) * FRONT_STRIDE + FRONT_STRIDE


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded up to ``multiple`` (the replicate padding the architecture needs)."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def to_model_input(pixels: np.ndarray, device: torch.device, copy: bool = True) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float in [0, 1], viewed channels_last (no transposing copy).

    ``copy=False`` only for an array nobody else holds (torch shares its memory).
    """
    array = np.array(pixels, copy=True) if copy else pixels
    return torch.from_numpy(array).to(device).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def analyze(g_a: nn.Module, image: np.ndarray, pad_multiple: int, tile: int, device: torch.device) -> torch.Tensor:
    """y = g_a(x) for an HxWx3 uint8 picture, replicate-padded to ``pad_multiple`` (tile 0: never tiled)."""
    h, w = image.shape[:2]
    ph, pw = padded_size(h, w, pad_multiple)
    if tile == 0 or (ph <= tile and pw <= tile):
        x = to_model_input(image, device)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        return g_a(x * 2.0 - 1.0).contiguous()
    halo = analysis_halo(g_a)
    row_cores = cores(spans(ph, tile, 0, FRONT_STRIDE), FRONT_STRIDE)
    col_cores = cores(spans(pw, tile, 0, FRONT_STRIDE), FRONT_STRIDE)
    s = FRONT_STRIDE
    feats: torch.Tensor | None = None
    for rows in row_cores:
        for cols in col_cores:
            r, c = rows.widened(halo, ph), cols.widened(halo, pw)
            out = g_a.run_stages(_replicated(image, r, c, device) * 2.0 - 1.0, 0, FRONT_STAGES)
            if feats is None:
                feats = out.new_empty(1, out.shape[1], ph // s, pw // s).contiguous(memory_format=torch.channels_last)
            top, left = (rows.start - r.start) // s, (cols.start - c.start) // s
            feats[..., rows.start // s : rows.stop // s, cols.start // s : cols.stop // s] = out[
                ..., top : top + rows.size // s, left : left + cols.size // s
            ]
    assert feats is not None
    return g_a.refine(g_a.run_stages(feats, FRONT_STAGES, g_a.n_stages)).contiguous()


def _replicated(image: np.ndarray, rows: Span, cols: Span, device: torch.device) -> torch.Tensor:
    """The picture over ``rows`` x ``cols`` as model input, rows and columns past its edge replicated."""
    h, w = image.shape[:2]
    # A slice copy, edge-padded only where the span runs past the picture: fancy indexing of the
    # whole span cost ~30 ms a tile at 12 MP, a sixth of the tile's g_a front.
    inside = np.ascontiguousarray(image[rows.start : min(rows.stop, h), cols.start : min(cols.stop, w)])
    past = (max(0, rows.stop - h), max(0, cols.stop - w))
    if past != (0, 0):
        inside = np.pad(inside, ((0, past[0]), (0, past[1]), (0, 0)), mode="edge")
    return to_model_input(inside, device, copy=False)  # a fresh array nobody else holds
