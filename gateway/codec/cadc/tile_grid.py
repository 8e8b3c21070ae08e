"""Tile geometry: overlapping windows that cover a grid, blend weights that sum to one, disjoint cores.

Large pictures are coded in tiles so that the working set is set by the tile
size, not by the picture (see ``docs/tiling.md``).  This module is the
geometry only, one axis at a time (a 2-D grid is the product of a row axis
and a column axis), with no torch in it:

* :func:`spans`: equal windows of at most ``tile`` positions, spread evenly
  from one end to the other so that neighbours overlap by at least
  ``overlap``; a length that fits one tile gets exactly one window, the whole
  axis (small pictures take the untiled path);
* :func:`blend_weights`: for each window a weight per position, ramping
  across the overlaps, such that the windows covering any position have
  weights summing to one: blending overlapping outputs with them leaves no
  step at a tile edge;
* :func:`cores`: a partition of the axis into one disjoint piece per window,
  for work that is exact with a halo and needs no blending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Span:
    """The half-open range ``[start, stop)`` of an axis."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def scaled(self, factor: int) -> "Span":
        """The same range on a grid ``factor`` times finer (e.g. latent positions -> pixels)."""
        return Span(self.start * factor, self.stop * factor)

    def widened(self, halo: int, length: int) -> "Span":
        """This range grown by ``halo`` on both sides, clipped to ``[0, length)``."""
        return Span(max(0, self.start - halo), min(length, self.stop + halo))


def spans(length: int, tile: int, overlap: int, align: int = 1) -> tuple[Span, ...]:
    """Windows covering ``[0, length)``: one when ``length <= tile`` (or ``tile == 0``: tiling off).

    Otherwise the fewest windows of at most ``tile`` positions that overlap
    by at least ``overlap``: ``n = ceil((length - overlap) / (tile - overlap))``
    of them, all of one size (one shape: a network runs every tile alike),
    just large enough to cover the axis with that overlap (so a length
    slightly above ``tile`` costs two smaller windows, not two full ones); the
    first starts at 0, the last ends at ``length``, the others are spread
    evenly between with starts rounded down to multiples of ``align`` (so that
    windows of a fine grid map onto whole units of a coarser one).
    ``length``, ``tile`` and ``overlap`` must be multiples of ``align`` when
    tiling, with ``0 <= overlap < tile``.
    """
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    if tile == 0 or length <= tile:
        return (Span(0, length),)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    for name, value in (("length", length), ("tile", tile), ("overlap", overlap)):
        if value % align:
            raise ValueError(f"{name}={value} must be a multiple of {align} to tile this grid")
    count = math.ceil((length - overlap) / (tile - overlap))
    size = -(-(length + (count - 1) * overlap) // (count * align)) * align  # <= tile, as count was chosen
    stride = (length - size) / (count - 1)
    starts = [int(i * stride) // align * align for i in range(count - 1)] + [length - size]
    return tuple(Span(s, s + size) for s in starts)


def _edge_distances(span: Span, length: int) -> np.ndarray:
    """Per position of ``span``, how far it is from the nearer edge it shares with a neighbour (inf: none)."""
    pos = np.arange(span.start, span.stop, dtype=np.float64)
    to_start = pos - span.start if span.start > 0 else np.full_like(pos, np.inf)
    to_stop = span.stop - 1 - pos if span.stop < length else np.full_like(pos, np.inf)
    return np.minimum(to_start, to_stop)


def blend_weights(windows: Sequence[Span], length: int, overlap: int) -> list[np.ndarray]:
    """For each window, float64 weights of its positions; at every position of the axis they sum to one.

    A window's output is least trustworthy at an edge it shares with a
    neighbour (a network sees zero padding there, and normalisation
    statistics of its tile alone), so its weight there is 0 for the outermost
    ``overlap // 4`` positions, then ramps up linearly to 1 over the rest of
    the overlap, and the neighbour's weight ramps down alike: a linear
    cross-fade.  Edges of the axis itself keep weight 1.  Raises ValueError if
    some position would get no weight (windows that do not overlap by at
    least ``2 * (overlap // 4) + 1``).
    """
    margin = overlap // 4
    ramp = overlap - 2 * margin + 1
    raw = [np.clip((_edge_distances(w, length) - margin + 1) / ramp, 0.0, 1.0) for w in windows]
    total = np.zeros(length, dtype=np.float64)
    for w, r in zip(windows, raw):
        total[w.start : w.stop] += r
    if np.any(total <= 0):
        raise ValueError(f"windows {list(windows)} leave positions of [0, {length}) without weight")
    return [r / total[w.start : w.stop] for w, r in zip(windows, raw)]


def cores(windows: Sequence[Span], align: int = 1) -> tuple[Span, ...]:
    """A partition of the axis the ``windows`` cover: piece i lies inside window i.

    Neighbouring pieces meet in the middle of the windows' overlap (rounded
    down to a multiple of ``align``), so each piece keeps away from its
    window's shared edges.
    """
    bounds = [windows[0].start]
    for left, right in zip(windows, windows[1:]):
        bounds.append(max(bounds[-1], (right.start + left.stop) // 2 // align * align))
    bounds.append(windows[-1].stop)
    return tuple(Span(a, b) for a, b in zip(bounds, bounds[1:]))
