"""The colour layer: the original's cell means beside the latent (format 3), laid onto the decoded picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codec import bitstream
from gateway.codec.base import Knobs
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.color_layer import (
    MAX_CELLS_PER_PLANE, ColorLayerPolicy, ColorLayerSettings, apply_color_layer, decode_color_layer,
    encode_color_layer,
)
from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.layer_table import LAYERS, LayerTable
from gateway.codec.image_metrics import cell_means
from gateway.errors import BitstreamError, ChecksumMismatch, CodecError, ConfigError
from gateway.eval.metrics import block_delta_e
from cadc_fixtures import widened_tiny_codec

SIZE = (96, 80)
TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _image(seed: int, w: int = SIZE[0], h: int = SIZE[1]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([0.2 + 0.6 * xx / w, 0.3 + 0.5 * yy / h, 0.5 + 0.3 * np.sin(xx / 9.0 + yy / 13.0)], axis=-1) * 255
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


cells = st.sampled_from([0, 4, 5, 8, 13, 16, 32, 255])
steps = st.integers(1, 40).map(lambda c: c / 4)


@settings(max_examples=40, deadline=None)
@given(w=st.integers(1, 70), h=st.integers(1, 70), luma=cells, chroma=cells, luma_step=steps, chroma_step=steps,
       seed=st.integers(0, 2**16))
def test_layer_round_trips_to_the_quantized_cell_means(w: int, h: int, luma: int, chroma: int, luma_step: float,
                                                       chroma_step: float, seed: int) -> None:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    s = ColorLayerSettings(luma, chroma, luma_step, chroma_step)
    data = encode_color_layer(image, s)
    if s.empty:
        assert data == b""
        return
    layer = decode_color_layer(data, w, h)
    assert layer.settings == s and layer.size == len(data)
    ycc = image.astype(np.float64) @ TO_YCC.T
    for (channel, cell, step), got in zip(s.planes(), layer.means):
        exact = cell_means(ycc[:, :, channel], cell) / step
        tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < 1e-4  # summation order may round a tie either way
        assert np.all((got == np.rint(exact) * step) | (tie & (np.abs(got / step - exact) <= 0.5 + 1e-4)))


def test_applying_the_layer_undoes_a_local_colour_cast() -> None:
    original = _image(1, 128, 96)
    cast = original.astype(np.float64)
    cast[:48, :64] *= [0.8, 1.0, 1.15]  # a desaturating cast on one quarter, as the small VAE makes
    cast[48:] += [-10, 6, -4]
    cast = np.clip(cast, 0, 255).astype(np.uint8)
    layer = decode_color_layer(encode_color_layer(original, ColorLayerSettings(16, 16, 1.0, 1.0)), 128, 96)
    fixed = apply_color_layer(cast, layer)
    assert block_delta_e(original, fixed) < 0.35 * block_delta_e(original, cast)
    # Detail (what the latent carries) is kept: the correction is smooth.
    detail = lambda a: a.astype(np.float64) - torch.nn.functional.avg_pool2d(  # noqa: E731
        torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None], 5, 1, 2, count_include_pad=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(detail(fixed) - detail(cast)).mean() < 1.5


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), w=st.integers(1, 5000), h=st.integers(1, 5000))
def test_garbage_is_refused_or_parsed_never_crashes(data: bytes, w: int, h: int) -> None:
    try:
        layer = decode_color_layer(data, w, h)
    except BitstreamError:
        return
    for (_, cell, _), means in zip(layer.settings.planes(), layer.means):
        assert means.size <= MAX_CELLS_PER_PLANE and means.shape == (-(-h // cell), -(-w // cell))


def test_cells_beyond_the_bound_are_refused_before_allocation() -> None:
    with pytest.raises(BitstreamError, match="cells"):
        decode_color_layer(bytes([4, 0, 4, 4, 96]) + b"\0" * 8, 65535, 65535)
    with pytest.raises(CodecError, match="larger cells"):
        encode_color_layer(np.zeros((4100, 4100, 3), np.uint8), ColorLayerSettings(4, 0))
    for bad in (dict(luma_cell=3), dict(chroma_cell=256), dict(luma_step=0.1), dict(chroma_step=64.0)):
        with pytest.raises(CodecError):
            ColorLayerSettings(**bad)


def test_policy_picks_the_finest_rule_the_lambda_reaches_and_config_checks_rows() -> None:
    policy = ColorLayerPolicy.from_config([{"min_lam": 0, "luma_cell": 16, "chroma_cell": 16},
                                           {"min_lam": 50, "chroma_cell": 64}])
    assert policy.settings_for(100.0) == ColorLayerSettings(0, 64)
    assert policy.settings_for(10.0) == ColorLayerSettings(16, 16)
    assert ColorLayerPolicy.from_config([{"min_lam": 5, "chroma_cell": 32}]).settings_for(1.0).empty
    for rows in ([{"chroma_cell": 32}], [{"min_lam": 1, "chroma_cel": 32}], [{"min_lam": 1, "chroma_cell": 2}]):
        with pytest.raises(ConfigError, match="color_layer"):
            CADCConfig.from_dict({"codec": {"color_layer": rows}})
    # the fingerprint names the rows whatever their order in the config, and changes with any of them
    same = ColorLayerPolicy.from_config([{"min_lam": 50, "chroma_cell": 64},
                                         {"min_lam": 0, "luma_cell": 16, "chroma_cell": 16}])
    other = ColorLayerPolicy.from_config([{"min_lam": 0, "luma_cell": 16, "chroma_cell": 16},
                                          {"min_lam": 50, "chroma_cell": 96}])
    assert policy.fingerprint == same.fingerprint != other.fingerprint
    assert len(policy.fingerprint) == 4 and ColorLayerPolicy([]).fingerprint != policy.fingerprint


@given(sizes=st.lists(st.integers(0, 1 << 20), min_size=LAYERS, max_size=LAYERS),
       checks=st.lists(st.integers(0, 255), min_size=LAYERS - 1, max_size=LAYERS - 1),
       color=st.integers(0, 1 << 20), tail=st.binary(max_size=8))
def test_format_3_table_round_trips(sizes: list[int], checks: list[int], color: int, tail: bytes) -> None:
    table = LayerTable(tuple(sizes), tuple(checks), color)
    packed = table.pack()
    assert len(packed) == LayerTable.size_for(sizes, color)
    assert LayerTable.unpack(packed + tail, color=True) == (table, len(packed))
    for cut in range(len(packed)):
        with pytest.raises(BitstreamError):
            LayerTable.unpack(packed[:cut], color=True)


# -- in the codec -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> CADCCodec:
    return widened_tiny_codec(tmp_path_factory.mktemp("cadc-color"),
                              color_layer=[{"min_lam": 0, "luma_cell": 16, "chroma_cell": 16}])


def test_codec_writes_format_3_with_the_layer_and_decodes_it(codec: CADCCodec) -> None:
    image = _image(2)
    analysis = codec.analyze(image)
    data = codec.encode(analysis, Knobs(160, 100), SIZE)
    header, payload = bitstream.unpack(data)
    assert header.version == 3
    table, offset = LayerTable.unpack(payload, color=True)
    assert table.color_bytes and offset + table.color_bytes + sum(table.sizes) == len(payload)
    assert abs(codec.estimate_bytes(analysis, Knobs(160, 100)) - len(data)) < 8
    out, info = codec.decode_with_info(data)
    assert info["color_layer"]["bytes"] == table.color_bytes and info["color_layer"]["luma_cell"] == 16
    # The same symbols without the layer (format 2) decode to the uncorrected picture; the layer brings the
    # random model's colours towards the original's.
    plain = CADCCodec(codec.model)
    plain.color_policy = ColorLayerPolicy([])
    bare = plain.decode(plain.encode(plain.analyze(image), Knobs(160, 100), SIZE))
    assert bitstream.unpack(plain.encode(plain.analyze(image), Knobs(160, 100), SIZE))[0].version == 2
    assert block_delta_e(image, out) < block_delta_e(image, bare)
    # A prefix holding the colour layer and ẑ previews with the layer; one cut inside the layer is refused.
    base = bitstream.HEADER_SIZE + offset + table.color_bytes
    preview, pinfo = codec.decode_with_info(data[: base + table.sizes[0]], partial=True)
    assert pinfo["layers"] == 1 and pinfo["color_layer"] is not None
    assert codec.prefix_layers(data[: base + table.sizes[0]]) == (1, LAYERS)
    assert codec.prefix_layers(data[: base - 1]) == (0, LAYERS)
    with pytest.raises(BitstreamError, match="colour layer"):
        codec.decode_with_info(data[: base - 1], partial=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_a_changed_colour_byte_is_caught_by_the_header_checksum(codec: CADCCodec, at: int, flip: int) -> None:
    data = codec.encode(codec.analyze(_image(3)), Knobs(160, 100), SIZE)
    payload = data[bitstream.HEADER_SIZE:]
    table, offset = LayerTable.unpack(payload, color=True)
    pos = bitstream.HEADER_SIZE + offset + at % table.color_bytes
    bad = bytearray(data)
    bad[pos] ^= flip
    with pytest.raises(ChecksumMismatch):
        codec.decode(bytes(bad))


def test_the_ground_record_says_which_colour_layer_the_picture_had(codec: CADCCodec, tmp_path: Path) -> None:
    from gateway.ground.output import DecodeJob, OutputRecord, decode_message
    from gateway.store.framestore import StoredMessage

    data = codec.encode(codec.analyze(_image(4)), Knobs(160, 100), SIZE)
    msg = StoredMessage(9, "receiving", 4, 4, 1.0, 2.0, None, None, 4, 0, 1, None, None, None, 0)
    rec = decode_message(DecodeJob(msg, data, str(tmp_path), 450, revision=1), codec_for=lambda *a, **k: codec)
    assert isinstance(rec, OutputRecord) and rec.complete
    assert rec.color_layer is not None and rec.color_layer["luma_cell"] == 16 and rec.color_layer["bytes"] > 0
    assert OutputRecord.from_dict(json.loads(rec.to_json())).color_layer == rec.color_layer
