"""CADC on pictures of any size: tiled synthesis and analysis, the oversize policy, the tile config keys.

Small tiles on small pictures (tens of latent positions), so that every test
takes a fraction of a second; how time and memory scale on big pictures is
measured by ``tools/bench_scaling.py``, not here.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codec import bitstream
from gateway.codec.base import Knobs
from gateway.codec.cadc import codec as codec_module
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.model import CADCModel
from gateway.codec.cadc.tile_grid import Span
from gateway.codec.cadc.layers import AnalysisTransform
from gateway.codec.cadc.tiled_analysis import analysis_halo, analyze as analyze_in_tiles
from gateway.codec.cadc.tiled_synthesis import TiledSynthesis, TileSettings, to_uint8
from gateway.errors import CodecError, ConfigError
from gateway.ratecontrol import fit
from cadc_fixtures import textured_image, widen_gains

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml"
#: Tiles far smaller than any real setting, so that a 256x192 picture (32x24 latent) is cut into several.
SMALL_TILES = TileSettings(unet_tile=16, unet_overlap=8, vae_tile=16, vae_overlap=4)


def _config(**codec: Any) -> CADCConfig:
    data = yaml.safe_load(TINY_YAML.read_text())
    data["codec"].update(codec)
    return CADCConfig.from_dict(data)


@pytest.fixture(scope="module")
def codec() -> CADCCodec:
    """A random-init cadc-tiny whose λ gains are widened so that its symbols are not all zero, and whose
    colour correction (zero-initialised: the identity) is given a last layer that changes the picture.
    No colour layer (format 2): these tests compare the synthesis with and without tiles."""
    torch.manual_seed(0)
    model = CADCModel(_config(color_layer=[]))
    with torch.no_grad():
        widen_gains(model, 6.0)
        assert model.color is not None
        torch.nn.init.normal_(model.color.net[-1].weight, std=0.05)
        model.color.net[-1].bias.copy_(torch.tensor([0.05, -0.03, 0.02]))
    return CADCCodec(model)



def _latent_input(codec: CADCCodec, image: np.ndarray, knobs: Knobs = Knobs(200, 100)) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŷ, inverse gain) the decoder would synthesise from for ``image``."""
    h, w = image.shape[:2]
    _, sym = codec.decode_symbols(codec.encode(codec.analyze(image), knobs, (w, h)))
    _, inv_gain = codec.model.gains(torch.tensor([codec.lam(knobs.lam_code)]))
    return torch.from_numpy(sym.q).float().unsqueeze(0) * codec.delta(knobs.delta_code), inv_gain


def test_a_picture_that_fits_one_tile_decodes_as_before_tiling(codec: CADCCodec) -> None:
    """Default tiles: a small picture takes the untiled path, bit for bit the pre-tiling pipeline
    (the VAE decoder followed by the colour correction: ``model.decode_pixels``)."""
    img = textured_image()
    data = codec.encode(codec.analyze(img), Knobs(200, 100), (256, 192))
    out, info = codec.decode_with_info(data)
    assert info["tiles"] == {"unet": (1, 1), "vae": (1, 1)}
    # The pipeline as it was written before tiling: g_s, UNet and VAE decoder on the whole latent.
    model = codec.model
    y_hat, inv_gain = _latent_input(codec, img)
    with torch.no_grad(), codec_module._threads(codec.decoder_threads):
        l_t = model.synthesize_latent(y_hat, inv_gain)
        text, _ = model.text(None, 1, l_t.device, l_t.dtype)
        l0 = model.denoise(l_t, text)
        x_hat = model.decode_pixels(l0.contiguous(memory_format=torch.channels_last))[..., :192, :256]
        uncorrected = model.vae_decode(l0.contiguous(memory_format=torch.channels_last))[..., :192, :256]
    assert np.array_equal(out, to_uint8(x_hat[0]))
    assert not np.array_equal(out, to_uint8(uncorrected[0]))  # the colour correction was applied


@functools.lru_cache(maxsize=None)
def _model(transform_blocks: int) -> CADCModel:
    torch.manual_seed(1)
    return CADCModel(_config(transform_blocks=transform_blocks)).eval()


@pytest.mark.parametrize("blocks", [1, 0, 2])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_latent_of_any_region_is_exactly_the_whole_pictures(blocks: int, data: st.DataObject) -> None:
    """g_s with the computed halo gives, over any region, what it gives run on the whole of ŷ."""
    model = _model(blocks)
    y_hat = torch.randn(1, 64, 7, 9) * 3
    inv_gain = torch.ones(1, 64)
    synthesis = TiledSynthesis(model, y_hat, inv_gain, (9 * 32, 7 * 32), SMALL_TILES)
    with torch.no_grad():
        whole = model.synthesize_latent(y_hat, inv_gain)
        r0 = data.draw(st.integers(0, 27))
        c0 = data.draw(st.integers(0, 35))
        rows = Span(r0, data.draw(st.integers(r0 + 1, 28)))
        cols = Span(c0, data.draw(st.integers(c0 + 1, 36)))
        part = synthesis.latent(rows, cols)
    torch.testing.assert_close(part, whole[..., rows.start : rows.stop, cols.start : cols.stop], rtol=0, atol=1e-5)


def _local_stand_ins(model: CADCModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the UNet and VAE decoder by position-wise maps: tiled then equals untiled wherever tiles agree."""
    def denoise(l_t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.tanh(l_t[:, :8] * 0.7 + l_t[:, 8:16] * 0.3)

    def vae_decode(l0: torch.Tensor) -> torch.Tensor:
        rgb = torch.sigmoid(l0[:, :3] + 0.5 * l0[:, 3:6])
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")

    monkeypatch.setattr(model, "denoise", denoise)
    monkeypatch.setattr(model, "vae_decode", vae_decode)


@pytest.mark.parametrize("size", [(256, 192), (200, 136), (384, 128)])
def test_tiles_are_placed_and_blended_so_local_networks_match_untiled(
    codec: CADCCodec, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stand-ins that look at one position only, a tiled decode must reproduce the untiled one:
    tiles in the right place, weights summing to one, rows streamed out whole, the crop to the coded size.
    The (non-zero) colour correction runs per VAE tile; its reach stays inside the faded-out tile edges."""
    w, h = size
    _local_stand_ins(codec.model, monkeypatch)
    y_hat, inv_gain = _latent_input(codec, textured_image(h, w))
    with torch.no_grad():
        untiled = TiledSynthesis(codec.model, y_hat, inv_gain, (w, h), TileSettings(0, 0, 0, 0))
        tiled = TiledSynthesis(codec.model, y_hat, inv_gain, (w, h), SMALL_TILES)
        assert tiled.unet_grid[0] * tiled.unet_grid[1] > 1 and tiled.vae_grid[0] * tiled.vae_grid[1] > 1
        a, _ = untiled.run({})
        b, _ = tiled.run({})
    assert a.shape == b.shape == (h, w, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding only


def test_tiled_decode_runs_the_real_networks_tile_by_tile(codec: CADCCodec) -> None:
    """The real UNet and VAE decoder on small tiles: the whole picture comes back, with its tile grids and
    stage timings.  (How close it is to the untiled decode needs trained weights: tools/bench_seams.py.)"""
    img = textured_image()
    data = codec.encode(codec.analyze(img), Knobs(200, 100), (256, 192))
    out, info = _with_tiles(codec, SMALL_TILES).decode_with_info(data)
    assert info["tiles"]["unet"] == info["tiles"]["vae"] == (3, 3)  # a 32x32 latent (the picture padded to 256)
    assert set(info["timings_ms"]) >= {"g_s", "unet", "vae_decode"}
    assert out.shape == (192, 256, 3) and out.dtype == np.uint8


def test_a_latent_within_vae_single_tile_takes_one_vae_tile_and_a_larger_one_small_tiles(codec: CADCCodec) -> None:
    """Large pictures use the (faster) small VAE tiles while a picture up to ``vae_single_tile`` stays whole."""
    img = textured_image()
    data = codec.encode(codec.analyze(img), Knobs(200, 100), (256, 192))
    whole, info = _with_tiles(codec, dataclasses.replace(SMALL_TILES, vae_single=32)).decode_with_info(data)
    assert info["tiles"]["vae"] == (1, 1) and info["tiles"]["unet"] == (3, 3)  # the 32x32 latent fits 32
    _, info = _with_tiles(codec, dataclasses.replace(SMALL_TILES, vae_single=24)).decode_with_info(data)
    assert info["tiles"]["vae"] == (3, 3)
    untiled_vae, _ = _with_tiles(codec, dataclasses.replace(SMALL_TILES, vae_tile=0)).decode_with_info(data)
    assert np.array_equal(whole, untiled_vae)


def _with_tiles(codec: CADCCodec, tiles: TileSettings, **attrs: Any) -> CADCCodec:
    clone = object.__new__(CADCCodec)
    clone.__dict__.update(codec.__dict__, tiles=tiles, **attrs)
    return clone


def test_auxiliary_reconstruction_is_exact_in_tiles(codec: CADCCodec) -> None:
    """x̂_aux (BFATC's caption input, the rate controller's distortion proxy) is exact per tile core."""
    img = textured_image()
    analysis = codec.analyze(img)
    knobs = Knobs(200, 100)
    untiled = codec.estimate_distortion(analysis, knobs)
    tiled = _with_tiles(codec, SMALL_TILES).estimate_distortion(analysis, knobs)
    assert tiled == pytest.approx(untiled, rel=1e-5)
    y_hat, inv_gain = _latent_input(codec, img)
    with torch.no_grad():
        whole = TiledSynthesis(codec.model, y_hat, inv_gain, (256, 192), TileSettings(0, 0, 0, 0)).caption_input()
        parts = TiledSynthesis(codec.model, y_hat, inv_gain, (256, 192), SMALL_TILES).caption_input()
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(512, 384), (300, 700)])
def test_tiled_analysis_gives_the_same_y(codec: CADCCodec, size: tuple[int, int]) -> None:
    w, h = size
    img = textured_image(h, w, seed=3)
    pad = codec.model.config.codec.pad_multiple
    with torch.no_grad():
        whole = analyze_in_tiles(codec._g_a, img, pad, 0, torch.device("cpu"))
        tiled = analyze_in_tiles(codec._g_a, img, pad, 256, torch.device("cpu"))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-4)


def test_tiled_analysis_widens_its_halo_for_stage_blocks() -> None:
    """Residual blocks inside g_a's stages see further than the plain stages: tiles still give the same y."""
    torch.manual_seed(1)
    g_a = AnalysisTransform([24, 32, 48, 64], 64, 1, [0, 1, 1, 2]).eval()
    with torch.no_grad():
        for name, weight in g_a.stages.named_parameters():
            if "conv2.weight" in name:
                torch.nn.init.normal_(weight, std=0.05)  # not the identity they start as
    assert analysis_halo(g_a) > analysis_halo(AnalysisTransform([24, 32, 48, 64], 64, 1))
    img = textured_image(300, 700, seed=4)
    with torch.no_grad():
        whole = analyze_in_tiles(g_a, img, 128, 0, torch.device("cpu"))
        tiled = analyze_in_tiles(g_a, img, 128, 256, torch.device("cpu"))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-4)


def test_a_picture_above_max_pixels_is_coded_downscaled_and_restored(codec: CADCCodec) -> None:
    small = _with_tiles(codec, codec.tiles, max_pixels=128 * 96)
    img = textured_image(192, 256)
    result = fit(small, img, 3)
    coded = bitstream.scaled_size(256, 192, result.knobs.scale_code)
    assert result.downscaled and coded[0] * coded[1] <= 128 * 96
    assert result.knobs.scale_code == bitstream.scale_code_within(256, 192, 128 * 96) == 8  # the largest that fits
    assert small.decode(result.bitstream).shape == (192, 256, 3)  # the original size comes back


def test_a_picture_above_max_pixels_is_refused_when_configured(codec: CADCCodec) -> None:
    refusing = _with_tiles(codec, codec.tiles, max_pixels=128 * 96, oversize="refuse")
    with pytest.raises(CodecError, match=r"256x192 \(49,152 pixels\) is above the 12,288-pixel limit of cadc"):
        fit(refusing, textured_image(192, 256), 3)
    with pytest.raises(CodecError, match="limit"):
        refusing.analyze(textured_image(192, 256))  # nor can the codec be handed one directly


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"unet_tile": 100}, "unet_tile must be 0"),
        ({"unet_tile_overlap": 12}, "unet_tile_overlap must be a multiple of 8"),
        ({"vae_tile": 64, "vae_tile_overlap": 40}, "vae_tile_overlap must be a multiple of 1 from 0 to half"),
        ({"analysis_tile": 200}, "analysis_tile must be 0"),
        ({"vae_tile": 64, "vae_single_tile": 48}, "vae_single_tile must be 0 or at least"),
        ({"oversize": "crop"}, "oversize must be one of"),
    ],
)
def test_bad_tile_settings_are_refused(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**keys)


def test_tile_settings_come_from_the_bundle_config() -> None:
    cfg = _config(unet_tile=64, unet_tile_overlap=8, vae_tile=48, vae_tile_overlap=4, analysis_tile=512)
    assert TileSettings.of(cfg.codec) == TileSettings(64, 8, 48, 4, 96)  # vae_single_tile from the yaml
    assert dataclasses.asdict(TileSettings.of(CADCConfig().codec)) == {
        "unet_tile": 96, "unet_overlap": 16, "vae_tile": 96, "vae_overlap": 8, "vae_single": 0,
    }
