"""Encoder-side refinement of CADC's symbols: never worse, never over budget, off unless asked for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.codec.base import Knobs
from gateway.codec.cadc.bundle import create_bundle, load_encoder, load_model
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.refine import RefineSettings, refine
from gateway.codec.registry import make_codec
from gateway.errors import CodecError, ConfigError
from gateway.ratecontrol import fit, fit_bytes
from cadc_fixtures import textured_image, widen_gains

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml"
IMAGE = textured_image(64, 96)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return create_bundle(TINY_YAML, tmp_path_factory.mktemp("cadc-refine") / "tiny")


@pytest.fixture(scope="module")
def codec(bundle: Path) -> CADCCodec:
    model = load_model(bundle)
    widen_gains(model, 7.0)
    return CADCCodec(model)


def _loss(report: object, lam: float, pixels: int) -> tuple[float, float]:
    r = report
    return (lam * r.bits_before / pixels + r.distortion_before,  # type: ignore[attr-defined]
            lam * r.bits_after / pixels + r.distortion_after)  # type: ignore[attr-defined]


def test_refined_symbols_lower_the_models_loss_and_decode(codec: CADCCodec) -> None:
    analysis = codec.analyze(IMAGE)
    knobs = Knobs(120, codec.rate_anchor_delta_code)
    before = codec.encode(analysis, knobs, (96, 64))
    weights = [p.detach().clone() for p in codec.model.parameters()]
    grads = [p.requires_grad for p in codec.model.parameters()]
    refined, report = refine(codec, analysis, knobs, RefineSettings(iterations=3, step=0.05))
    loss_before, loss_after = _loss(report, codec.lam(knobs.lam_code), 96 * 64)
    assert loss_after <= loss_before
    assert report.improved == (report.best_iteration > 0) and 0 <= report.best_iteration <= 3
    data = codec.encode(refined, knobs, (96, 64))
    assert codec.decode(data).shape == IMAGE.shape
    # The caller's analysis and the model are untouched; the model is left as the codec keeps it.
    assert codec.encode(analysis, knobs, (96, 64)) == before
    assert all(torch.equal(a, b) for a, b in zip(weights, codec.model.parameters()))
    assert [p.requires_grad for p in codec.model.parameters()] == grads
    conv = next(m for m in codec.model.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_zero_steps_keep_g_a_symbols(codec: CADCCodec) -> None:
    analysis = codec.analyze(IMAGE)
    knobs = Knobs(60, codec.rate_anchor_delta_code)
    refined, report = refine(codec, analysis, knobs, RefineSettings(iterations=0))
    assert not report.improved and report.bits_after == report.bits_before
    assert codec.encode(refined, knobs, (96, 64)) == codec.encode(analysis, knobs, (96, 64))


def test_fit_with_refinement_stays_within_budget(codec: CADCCodec) -> None:
    frames = 2
    plain = fit(codec, IMAGE, frames)
    assert plain.refinement is None  # off by default
    refining = dataclasses.replace(codec.refine_settings, iterations=2, step=0.05)
    codec.refine_settings = refining
    try:
        result = fit(codec, IMAGE, frames)
    finally:
        codec.refine_settings = RefineSettings(iterations=0)
    assert result.bytes <= result.budget_bytes
    assert codec.decode(result.bitstream).shape == IMAGE.shape
    report = result.refinement
    assert report is not None and report["search_bytes"] == plain.bytes and 1 <= len(report["passes"]) <= 2
    chosen = report["chosen_pass"]
    if chosen is None:
        assert result.bitstream == plain.bitstream  # refinement did not pay: the search's pick is sent
    else:
        kept = report["passes"][chosen]
        knobs, size = kept.get("settled_knobs", kept["knobs"]), kept.get("settled_bytes", kept["bytes"])
        assert size == result.bytes and [result.knobs.lam_code, result.knobs.delta_code] == knobs[:2]
    assert "refinement" in result.as_dict()


@pytest.mark.parametrize("shift", [-12, -3, 0, 25])
def test_settling_codes_a_pass_at_the_nearby_delta_that_fills_the_budget(codec: CADCCodec, shift: int) -> None:
    """A pass's bitstream over budget steps Δ up until it fits; one well under steps Δ down; same λ, few codes."""
    from gateway.ratecontrol.refinement import _settle_delta
    from gateway.ratecontrol.search import Search

    analysis = codec.analyze(IMAGE)
    knobs = Knobs(140, codec.rate_anchor_delta_code)
    data = codec.encode(analysis, knobs, (96, 64))
    search = Search(codec, IMAGE, len(data) + shift)
    settled = _settle_delta(search, analysis, knobs, data)
    assert settled is not None
    k, coded = settled
    assert k.lam_code == knobs.lam_code and abs(k.delta_code - knobs.delta_code) <= 16
    assert len(coded) <= search.budget and coded == codec.encode(analysis, k, (96, 64))
    if shift < 0:
        assert k.delta_code > knobs.delta_code  # over budget: a coarser Δ
    elif shift > 10:
        assert k.delta_code < knobs.delta_code  # bytes to spare: a finer Δ
    if k.delta_code > knobs.delta_code - 16:  # the next finer Δ in the window would not have fitted (nor was predicted to)
        finer = Knobs(k.lam_code, k.delta_code - 1, 0)
        assert len(codec.encode(analysis, finer, (96, 64))) > search.budget or codec.estimate_bytes(analysis, finer) > search.budget


def test_symbol_distortion_is_the_refinements_measure(codec: CADCCodec) -> None:
    analysis = codec.analyze(IMAGE)
    knobs = Knobs(120, codec.rate_anchor_delta_code)
    refined, report = refine(codec, analysis, knobs, RefineSettings(iterations=2, step=0.05))
    codec.refine_settings = RefineSettings(iterations=2, step=0.05)
    try:
        assert codec.symbol_distortion(refined, knobs) == pytest.approx(report.distortion_after, rel=1e-5)
        assert codec.symbol_distortion(analysis, knobs) == pytest.approx(report.distortion_before, rel=1e-5)
    finally:
        codec.refine_settings = RefineSettings(iterations=0)


def test_fit_bytes_refines_too(codec: CADCCodec) -> None:
    codec.refine_settings = RefineSettings(iterations=1, step=0.05)
    try:
        result = fit_bytes(codec, IMAGE, 600)
    finally:
        codec.refine_settings = RefineSettings(iterations=0)
    assert result.bytes <= 600 and result.refinement is not None


def test_pictures_above_the_limit_and_encoder_only_codecs_are_not_refined(codec: CADCCodec, bundle: Path) -> None:
    analysis = codec.analyze(IMAGE)
    codec.refine_settings = RefineSettings(iterations=2, max_pixels=96 * 64 - 1)
    try:
        assert not codec.refines(analysis)
        assert fit(codec, IMAGE, 2).refinement is None
        with pytest.raises(CodecError, match="refinement limit"):
            refine(codec, analysis, Knobs(100, 85), codec.refine_settings)
    finally:
        codec.refine_settings = RefineSettings(iterations=0)
    sender = CADCCodec(load_encoder(bundle))
    sender.refine_settings = RefineSettings(iterations=2)
    assert not sender.refines(sender.analyze(IMAGE))
    with pytest.raises(CodecError, match="whole CADC model"):
        refine(sender, sender.analyze(IMAGE), Knobs(100, 85), sender.refine_settings)


@pytest.mark.parametrize("bad", [{"iterations": -1}, {"step": 0.0}, {"step": float("nan")}, {"max_pixels": 0}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(CodecError):
        RefineSettings(**bad)


def test_registry_loads_the_whole_model_to_refine(bundle: Path) -> None:
    codec = make_codec("cadc", bundle=str(bundle), encoder_only=True, refine=3)
    assert codec.decodes and codec.refine_settings.iterations == 3 and codec.device.type == "cpu"
    assert not make_codec("cadc", bundle=str(bundle), encoder_only=True).decodes
    with pytest.raises(ConfigError):
        make_codec("cadc", bundle=str(bundle), refine=-1)
    assert make_codec("webp", refine=3).name == "webp"  # classical codecs ignore it


def test_cli_encode_refine(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from gateway.cli import main

    png = tmp_path / "p.png"
    Image.fromarray(IMAGE).save(png)
    out = tmp_path / "p.sgw"
    assert main(["encode", str(png), "-n", "2", "--codec", "cadc", "--bundle", str(bundle), "--refine", "1",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "refinement pass 1" in text and out.stat().st_size <= 2 * 450
    assert main(["encode", str(png), "-n", "2", "--codec", "webp", "--refine", "1"]) == 2
    assert "--refine goes with the cadc codec" in capsys.readouterr().err
    assert np.asarray(Image.open(png)).shape == IMAGE.shape
