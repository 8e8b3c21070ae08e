"""Tile geometry: windows cover every position, blend weights sum to one, cores partition the axis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codec.cadc.tile_grid import Span, blend_weights, cores, spans


@st.composite
def axes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(length, tile, overlap, align) as the decoder and encoder use them: multiples of align, overlap <= tile/2."""
    align = draw(st.sampled_from([1, 4, 8, 16]))
    tile = align * draw(st.integers(2, 24))
    overlap = align * draw(st.integers(0, tile // align // 2))
    length = align * draw(st.integers(1, 400))
    return length, tile, overlap, align


@given(axes())
def test_windows_cover_every_position_with_the_overlap_asked(axis: tuple[int, int, int, int]) -> None:
    length, tile, overlap, align = axis
    windows = spans(length, tile, overlap, align)
    covered = np.zeros(length, dtype=int)
    for w in windows:
        covered[w.start : w.stop] += 1
        assert w.size == windows[0].size <= tile  # one shape for every tile
        assert w.start % align == 0 and w.stop % align == 0
    assert covered.min() >= 1
    assert windows[0].start == 0 and windows[-1].stop == length
    for left, right in zip(windows, windows[1:]):
        assert right.start > left.start
        assert left.stop - right.start >= overlap
    if length <= tile:
        assert windows == (Span(0, length),)
    else:  # the fewest windows that can: one fewer could not cover the axis with this overlap
        assert (len(windows) - 1) * (tile - overlap) + overlap < length


@given(axes())
def test_blend_weights_sum_to_one_everywhere(axis: tuple[int, int, int, int]) -> None:
    length, tile, overlap, align = axis
    windows = spans(length, tile, overlap, align)
    weights = blend_weights(windows, length, overlap)
    total = np.zeros(length)
    for w, wt in zip(windows, weights):
        assert wt.shape == (w.size,)
        assert np.all((wt >= 0) & (wt <= 1))
        total[w.start : w.stop] += wt
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)
    # A window's own interior (away from every neighbour) is all its own.
    if len(windows) == 1:
        assert np.all(weights[0] == 1.0)


@given(axes())
def test_blend_weights_fade_out_at_shared_edges(axis: tuple[int, int, int, int]) -> None:
    length, tile, overlap, align = axis
    windows = spans(length, tile, overlap, align)
    weights = blend_weights(windows, length, overlap)
    margin = overlap // 4
    for w, wt in zip(windows, weights):
        if w.start > 0 and margin:
            assert np.all(wt[:margin] == 0)  # zero padding at a tile edge never reaches the picture
        if w.stop < length and margin:
            assert np.all(wt[-margin:] == 0)


def test_two_windows_cross_fade_linearly() -> None:
    windows = spans(112, 64, 16)
    assert windows == (Span(0, 64), Span(48, 112))
    left, right = blend_weights(windows, 112, 16)
    # Overlap [48, 64): 4 positions of margin on each side, a straight ramp of 9 steps between.
    assert np.all(left[:52] == 1) and np.all(left[60:] == 0)
    np.testing.assert_allclose(np.diff(left[51:61]), -1 / 9)
    np.testing.assert_allclose(left[48:] + right[:16], 1.0)


@given(axes())
def test_cores_partition_the_axis_inside_their_windows(axis: tuple[int, int, int, int]) -> None:
    length, tile, overlap, align = axis
    windows = spans(length, tile, overlap, align)
    pieces = cores(windows, align)
    assert len(pieces) == len(windows)
    assert pieces[0].start == 0 and pieces[-1].stop == length
    for a, b in zip(pieces, pieces[1:]):
        assert a.stop == b.start
    for piece, window in zip(pieces, windows):
        assert window.start <= piece.start <= piece.stop <= window.stop
        assert piece.start % align == 0


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        spans(100, 64, 8, align=8)
    with pytest.raises(ValueError, match="overlap"):
        spans(200, 64, 64)
    with pytest.raises(ValueError, match="length"):
        spans(0, 64, 8)
    assert spans(1000, 0, 0) == (Span(0, 1000),)  # tile 0: tiling off
