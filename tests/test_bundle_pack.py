"""Packing a bundle's weights to float16 (gateway/codec/cadc/bundle_pack.py, ``satgw bundle pack``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cadc_fixtures import textured_image, widen_gains
from gateway.codec.base import Knobs
from gateway.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "models" / "cadc-tiny.yaml"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random cadc-tiny bundle whose gains make λ move the rate, with a stand-in quality calibration."""
    from gateway.codec.cadc.bundle import create_bundle, load_model, record_extra_file, save_bundle

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("pack")
    model = load_model(create_bundle(TINY_YAML, root / "random"))
    widen_gains(model, 6.0)
    src = save_bundle(model, root / "src")
    (src / "quality_calibration.json").write_text(json.dumps({"model_id": f"{model.model_id:04x}"}))
    record_extra_file(src, "quality_calibration.json")
    return src


@pytest.fixture(scope="module")
def packed(source: Path) -> Path:
    from gateway.codec.cadc.bundle_pack import pack_bundle

    out = source.parent / "packed"
    pack_bundle(source, out)
    return out


def _weight_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.safetensors"))


def test_a_packed_bundle_is_half_the_bytes_and_loads_as_float32_within_float16_rounding(source, packed) -> None:
    from gateway.codec.cadc.bundle import load_model

    assert _weight_bytes(packed) < 0.52 * _weight_bytes(source)
    a, b = load_model(source).state_dict(), load_model(packed).state_dict()
    assert a.keys() == b.keys()
    for name, t in a.items():
        assert b[name].dtype == t.dtype, name
        if t.is_floating_point():
            # float16 keeps 11 significant bits; values below its normal range round to its spacing there.
            assert torch.allclose(b[name], t, rtol=1e-3, atol=1e-7), name


def test_a_packed_bundle_is_another_model_and_drops_the_old_calibration(source, packed) -> None:
    from gateway.codec.cadc.bundle import bundle_model_id, model_id_of

    assert model_id_of(packed) != model_id_of(source)
    assert bundle_model_id(packed) == model_id_of(packed)  # its manifest describes its own files
    assert not (packed / "quality_calibration.json").exists()
    assert "files" not in json.loads((packed / "manifest.json").read_text())


def test_a_packed_bundle_codes_pictures_as_its_source_does(source, packed) -> None:
    from gateway.codec.cadc.codec import CADCCodec
    from gateway.eval.metrics import psnr

    image = textured_image(128, 128)
    decoded = []
    for folder in (source, packed):
        codec = CADCCodec.from_bundle(folder)
        analysis = codec.analyze(image)
        stream = codec.encode(analysis, Knobs(lam_code=20, delta_code=codec.rate_anchor_delta_code), (128, 128))
        decoded.append(codec.decode(stream))
    assert psnr(decoded[0], decoded[1]) > 35.0


def test_packed_weights_keep_the_source_files_permissions(source, tmp_path) -> None:
    """A bundle readable by every user (a ground station's service user) stays so when packed."""
    from gateway.codec.cadc.bundle_pack import pack_bundle

    src = shutil.copytree(source, tmp_path / "src")
    for path in src.rglob("*.safetensors"):
        path.chmod(0o644)
    pack_bundle(src, tmp_path / "packed")
    modes = {p.relative_to(tmp_path / "packed"): p.stat().st_mode & 0o777 for p in (tmp_path / "packed").rglob("*.safetensors")}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_training_run_warm_starts_from_a_packed_bundle(packed) -> None:
    from gateway.codec.cadc.bundle import load_model
    from gateway.training.build import build_model

    model = build_model(TINY_YAML, init_bundle=str(packed), log=lambda line: None)
    ref = load_model(packed).state_dict()
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            assert t.dtype == torch.float32 and torch.equal(t, ref[name]), name


def test_pack_refuses_an_existing_target_an_unknown_precision_and_a_tensor_float16_cannot_hold(source, tmp_path) -> None:
    from gateway.codec.cadc.bundle import CODEC_WEIGHTS
    from gateway.codec.cadc.bundle_pack import pack_bundle

    (tmp_path / "there").mkdir()
    with pytest.raises(BundleError, match="exists"):
        pack_bundle(source, tmp_path / "there")
    with pytest.raises(BundleError, match="unknown precision"):
        pack_bundle(source, tmp_path / "x", "float8")
    big = tmp_path / "big"
    shutil.copytree(source, big)
    state = load_file(str(big / CODEC_WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e6
    save_file(state, str(big / CODEC_WEIGHTS))
    with pytest.raises(BundleError, match="bfloat16"):
        pack_bundle(big, tmp_path / "big16")
    assert not (tmp_path / "big16").exists() and not list(tmp_path.glob(".big16*"))
    pack_bundle(big, tmp_path / "bigbf", "bfloat16")  # bfloat16 has float32's range
    assert np.isclose(load_file(str(tmp_path / "bigbf" / CODEC_WEIGHTS))[name].float().max().item(), 1e6, rtol=1e-2)


def test_satgw_bundle_pack_reports_the_packed_bundle_ready(source, tmp_path, capsys) -> None:
    from gateway.codec.cadc.bundle_cli import main

    assert main(["pack", str(source), str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "packed" in out and "float16" in out and out.rstrip().endswith("ready")
    assert main(["pack", str(source), str(tmp_path / "p")]) == 1  # the target exists now
