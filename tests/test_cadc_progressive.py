"""CADC bitstream v2: a layer table in front of the stream, every prefix with ẑ decodes to a picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codec import bitstream
from gateway.codec.base import Knobs
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.layer_table import LAYERS, LayerTable
from gateway.errors import BitstreamError, ChecksumMismatch
from cadc_fixtures import widened_tiny_codec

SIZE = (96, 80)  # (width, height)


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> CADCCodec:
    """A random-init cadc-tiny whose λ gains are widened so that every layer holds real symbols; format 2 here
    (no colour layer; format 3: test_cadc_color_layer.py)."""
    return widened_tiny_codec(tmp_path_factory.mktemp("cadc-prog"), color_layer=[])


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0.4 * np.sin(xx / 7.0 + yy / 11.0)], axis=-1) * 220
    return np.clip(base + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stream(codec: CADCCodec) -> bytes:
    return codec.encode(codec.analyze(_image()), Knobs(160, 100), SIZE)


def _table(stream: bytes) -> tuple[LayerTable, int]:
    return LayerTable.unpack(stream[bitstream.HEADER_SIZE:])


def test_full_stream_is_v2_with_a_layer_table_and_decodes(codec: CADCCodec, stream: bytes) -> None:
    header, payload = bitstream.unpack(stream)
    assert header.version == 2
    table, offset = _table(stream)
    assert all(s > 0 for s in table.sizes), table
    assert sum(table.sizes) == len(payload) - offset
    image, info = codec.decode_with_info(stream, partial=True)
    assert info["complete"] and info["layers"] == LAYERS
    assert np.array_equal(image, codec.decode(stream))


def test_each_layer_end_is_a_prefix_that_holds_exactly_those_layers(codec: CADCCodec, stream: bytes) -> None:
    table, offset = _table(stream)
    base = bitstream.HEADER_SIZE + offset
    full = codec.decode_symbols(stream)[1]
    for layers, end in enumerate(table.ends()[:-1], start=1):
        _, sym = codec.decode_symbols(stream[: base + end], partial=True)
        assert sym.steps == layers - 1
        assert np.array_equal(sym.z, full.z)
        # The steps it has are the full stream's; one byte less and the last of them is gone.
        mask = codec.model.quadtree_masks(torch.from_numpy(full.q).float()[None])[: sym.steps].sum(0)[0].numpy() > 0
        assert np.array_equal(sym.q[mask], full.q[mask]) and not np.any(sym.q[~mask])


def test_a_cut_stream_needs_partial_and_ẑ(codec: CADCCodec, stream: bytes) -> None:
    with pytest.raises(BitstreamError, match="truncated"):
        codec.decode(stream[:-3])
    table, offset = _table(stream)
    with pytest.raises(BitstreamError, match="preview needs the first"):
        codec.decode_with_info(stream[: bitstream.HEADER_SIZE + offset + table.sizes[0] - 1], partial=True)
    image, info = codec.decode_with_info(stream[: bitstream.HEADER_SIZE + offset + table.sizes[0]], partial=True)
    assert not info["complete"] and info["layers"] == 1 and image.shape == (SIZE[1], SIZE[0], 3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000))
def test_any_prefix_decodes_with_the_layers_it_holds_or_is_refused(codec: CADCCodec, stream: bytes, cut: int) -> None:
    prefix = stream[: min(cut, len(stream))]
    try:
        _, sym = codec.decode_symbols(prefix, partial=True)
    except BitstreamError:
        return
    table, offset = _table(stream)
    assert sym.steps == table.layers_in(len(prefix) - bitstream.HEADER_SIZE - offset) - 1


def test_preview_quality_grows_with_layers(codec: CADCCodec, stream: bytes) -> None:
    """The filled-in steps are the entropy model's means, so each prefix is a usable (if coarser) picture."""
    table, offset = _table(stream)
    base = bitstream.HEADER_SIZE + offset
    for end in table.ends():
        image, info = codec.decode_with_info(stream[: base + end], partial=True)
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8


def test_version_1_streams_still_decode_but_not_partially(codec: CADCCodec) -> None:
    old = CADCCodec(codec.model)
    old.bitstream_version = 1
    data = old.encode(old.analyze(_image(1)), Knobs(160, 100), SIZE)
    assert data[0] >> 4 == 1
    assert np.array_equal(codec.decode(data), codec.decode(codec.encode(codec.analyze(_image(1)), Knobs(160, 100), SIZE)))
    with pytest.raises(BitstreamError, match="format-1"):
        codec.decode_with_info(data[:-2], partial=True)


def test_header_fields_and_steps_are_checked(codec: CADCCodec, stream: bytes) -> None:
    for offset in (3, 7, 8, 9):  # width, scale, λ, Δ
        bad = bytearray(stream)
        bad[offset] ^= 0x01
        with pytest.raises(BitstreamError):
            codec.decode(bytes(bad))
    table, tlen = _table(stream)
    bad = bytearray(stream)
    bad[bitstream.HEADER_SIZE + tlen - 1] ^= 0x5A  # step 3's check byte
    with pytest.raises(ChecksumMismatch, match="step 3"):
        codec.decode(bytes(bad))


@given(sizes=st.lists(st.integers(0, 1 << 20), min_size=LAYERS, max_size=LAYERS),
       checks=st.lists(st.integers(0, 255), min_size=LAYERS - 1, max_size=LAYERS - 1),
       tail=st.binary(max_size=8))
def test_layer_table_round_trips_and_cut_tables_are_refused(sizes: list[int], checks: list[int], tail: bytes) -> None:
    table = LayerTable(tuple(sizes), tuple(checks))
    packed = table.pack()
    assert len(packed) == LayerTable.size_for(sizes)
    assert LayerTable.unpack(packed + tail) == (table, len(packed))
    for cut in range(len(packed)):
        with pytest.raises(BitstreamError):
            LayerTable.unpack(packed[:cut])


def test_prefix_layers_reads_what_a_partial_decode_finds_without_decoding(codec: CADCCodec, stream: bytes) -> None:
    table, offset = _table(stream)
    base = bitstream.HEADER_SIZE + offset
    assert codec.prefix_layers(stream) == (LAYERS, LAYERS)
    assert codec.prefix_layers(stream[: base - 1]) == (0, LAYERS)  # cut inside the table: no picture yet
    for cut in sorted({base + e - d for e in table.ends() for d in (0, 1)}):
        layers, total = codec.prefix_layers(stream[:cut])
        assert total == LAYERS and layers == table.layers_in(cut - base)
        if layers:
            assert codec.decode_with_info(stream[:cut], partial=True)[1]["layers"] == layers


def test_the_ground_writes_a_cadc_preview_from_the_first_frames(codec: CADCCodec, stream: bytes, tmp_path: Path) -> None:
    """The real output writer with this codec: a preview from a frame-sized prefix, then the complete picture."""
    from gateway.ground.output import DecodeJob, OutputRecord, PreviewSkipped, PreviewSpec, decode_message
    from gateway.store.framestore import StoredMessage
    from packetizer.frame import FrameCodec

    cap = FrameCodec(64).payload_capacity  # small frames, so this small stream spans several of them
    k = -(-len(stream) // cap)
    assert k >= 3
    msg = StoredMessage(7, "receiving", k, k, 1.0, 2.0, None, None, 2, 0, 1, None, None, None, 0)
    first = next(j for j in range(1, k) if codec.prefix_layers(stream[: j * cap])[0] >= 1)

    def job(data: bytes, revision: int, spec: PreviewSpec | None) -> DecodeJob:
        return DecodeJob(msg, data, str(tmp_path), 64, revision=revision, preview=spec)

    def ours(*args: object, **kwargs: object) -> CADCCodec:
        return codec

    early = decode_message(job(stream[: bitstream.HEADER_SIZE + 2], 1, PreviewSpec(1)), codec_for=ours)
    assert isinstance(early, PreviewSkipped) and early.reason == "no_picture_yet"  # cut inside the layer table
    rec = decode_message(job(stream[: first * cap], 1, PreviewSpec(first)), codec_for=ours)
    assert isinstance(rec, OutputRecord) and not rec.complete and rec.revision == 1
    assert rec.frames_used == first and 1 <= rec.layers_decoded < LAYERS and rec.layers_total == LAYERS
    assert (tmp_path / "7.png").is_file()
    done = decode_message(job(stream, 2, None), codec_for=ours)
    assert isinstance(done, OutputRecord) and done.complete and done.revision == 2 and done.layers_decoded == LAYERS


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(into=st.floats(0.0, 1.0))
def test_a_prefix_cut_inside_a_step_keeps_that_steps_first_symbols_exactly(codec: CADCCodec, stream: bytes,
                                                                            into: float) -> None:
    """The symbols a cut step yields are the full stream's (trusted by their information content alone)."""
    table, offset = _table(stream)
    base = bitstream.HEADER_SIZE + offset
    full = codec.decode_symbols(stream)[1]
    ends = table.ends()
    step = 1  # cut inside ŷ's second step, anywhere from its start to its end
    cut = base + ends[step] + int(into * (ends[step + 1] - ends[step] - 1))
    _, sym = codec.decode_symbols(stream[:cut], partial=True)
    assert sym.steps == step
    if sym.partial is not None:
        known = sym.partial > 0
        assert np.array_equal(sym.q[known], full.q[known])
        masks = codec.model.quadtree_masks(torch.from_numpy(full.q).float()[None])
        assert not np.any(known & (masks[step][0].numpy() == 0))  # only that step's elements


def test_most_of_a_step_received_gives_most_of_its_symbols(codec: CADCCodec, stream: bytes) -> None:
    table, offset = _table(stream)
    ends = table.ends()
    cut = bitstream.HEADER_SIZE + offset + ends[1] + (ends[2] - ends[1]) * 9 // 10
    _, sym = codec.decode_symbols(stream[:cut], partial=True)
    masks = codec.model.quadtree_masks(torch.from_numpy(sym.q).float()[None])
    in_step = float(masks[1].sum())
    assert sym.partial is not None and 0.3 * in_step < float(sym.partial.sum()) < in_step
    _, info = codec.decode_with_info(stream[:cut], partial=True)
    assert not info["complete"] and info["layers"] == 2 and 0.3 < info["partial_layer"] < 1
