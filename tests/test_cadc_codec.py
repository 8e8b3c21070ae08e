"""CADC codec end to end on tiny random bundles: coding, BFATC text path, checksums, bundles, hostile input."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadc_fixtures import widen_gains
from gateway.codec import bitstream
from gateway.codec.base import Knobs
from gateway.codec.cadc.bundle import create_bundle, load_model
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.config import C_FIX, CADCConfig
from gateway.codec.cadc.text import build_prompt
from gateway.codec.cadc.tiny_parts import write_text_parts
from gateway.errors import BitstreamError, BundleError, ChecksumMismatch, ModelMismatch

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml"


def _config(text_mode: str, sources: dict[str, str]) -> CADCConfig:
    d = yaml.safe_load(TINY_YAML.read_text())
    d["codec"].update(text_mode=text_mode, bfatc=text_mode == "caption")
    d["sources"] = {k: v for k, v in sources.items() if text_mode == "caption" or k != "captioner"}
    return CADCConfig.from_dict(d)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cadc")
    sources = write_text_parts(root / "parts", hidden_size=32)
    return {
        "caption": create_bundle(_config("caption", sources), root / "caption"),
        "fixed": create_bundle(_config("fixed", sources), root / "fixed"),
    }


@pytest.fixture(scope="module")
def codec(bundles: dict[str, Path]) -> CADCCodec:
    return CADCCodec.from_bundle(bundles["caption"])


def _image(h: int = 70, w: int = 90, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stream(codec: CADCCodec) -> bytes:
    return codec.encode(codec.analyze(_image()), Knobs(200, 100), (90, 70))


def test_bundle_folders_and_model_id(bundles: dict[str, Path], codec: CADCCodec) -> None:
    names = {p.name for p in bundles["caption"].iterdir()}
    assert {"config.yaml", "codec.safetensors", "unet", "vae", "scheduler", "text_encoder", "tokenizer", "captioner"} <= names
    assert "captioner" not in {p.name for p in bundles["fixed"].iterdir()}
    assert 0 < codec.model_id <= 0xFFFF
    assert CADCCodec.from_bundle(bundles["fixed"]).model_id != codec.model_id


@pytest.mark.parametrize("size", [(90, 70), (64, 64), (33, 130)])
def test_symbols_recovered_exactly(codec: CADCCodec, size: tuple[int, int]) -> None:
    w, h = size
    analysis = codec.analyze(_image(h, w, seed=w))
    for knobs in (Knobs(255, 85), Knobs(100, 200), Knobs(0, 255)):
        data = codec.encode(analysis, knobs, (w, h))
        header, decoded = codec.decode_symbols(data)
        expected = codec._quantize(analysis, knobs)
        assert np.array_equal(decoded.q, expected.q) and np.array_equal(decoded.z, expected.z)
        assert (header.width, header.height, header.lam_code, header.delta_code) == (w, h, knobs.lam_code, knobs.delta_code)


def test_rate_falls_with_lambda_and_delta_without_rerunning_g_a(codec: CADCCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    analysis = codec.analyze(_image(128, 128, seed=3))
    calls = []
    monkeypatch.setattr(codec.model.g_a, "forward", lambda *a: calls.append(1))
    sizes = [len(codec.encode(analysis, Knobs(lc, dc), (128, 128))) for lc, dc in ((255, 0), (128, 128), (0, 255))]
    assert not calls, "encode must reuse the analysis, not re-run g_a"
    assert sizes[0] > sizes[1] > sizes[2]


def test_decode_end_to_end_with_downscale(codec: CADCCodec) -> None:
    img = _image(80, 120)
    knobs = Knobs(180, 120, scale_code=8)  # coded at half size, restored to the original size
    small = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(img).resize((60, 40)))
    data = codec.encode(codec.analyze(small), knobs, (120, 80))
    out, info = codec.decode_with_info(data)
    assert out.shape == (80, 120, 3) and out.dtype == np.uint8
    assert info["coded_size"] == (60, 40) and info["lam"] == pytest.approx(codec.lam(180))
    assert {"entropy_decode", "g_s", "aux_decoder", "text", "unet", "vae_decode", "total"} <= set(info["timings_ms"])


class _Spy:
    """Wraps a callable object, recording the first positional argument of each call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args[0] if args else kwargs)
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_caption_of_aux_reconstruction_reaches_the_text_encoder(codec: CADCCodec, stream: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    text = codec.model.text
    tok_spy = _Spy(text.tokenizer)
    monkeypatch.setattr(text, "tokenizer", tok_spy)
    seen_images, captions = [], []
    real_caption = text.caption

    def caption_spy(images):
        seen_images.append(images.clone())
        captions.extend(real_caption(images))
        return list(captions)

    monkeypatch.setattr(text, "caption", caption_spy)
    _, info = codec.decode_with_info(stream)
    # The captioner saw exactly the ADGIC reconstruction of the decoded latent.
    header, sym = codec.decode_symbols(stream)
    with torch.no_grad():
        _, inv = codec.model.gains(torch.tensor([codec.lam(header.lam_code)]))
        y_hat = torch.from_numpy(sym.q).float().unsqueeze(0) * codec.delta(header.delta_code)
        x_aux = codec.model.aux_reconstruction(codec.model.synthesize_latent(y_hat, inv))[..., :70, :90]
    assert len(seen_images) == 1 and torch.allclose(seen_images[0], x_aux)
    assert captions[0], "the tiny captioner should produce words"
    assert tok_spy.calls == [[build_prompt(captions[0])]]
    assert tok_spy.calls[0][0] == f"{captions[0]}, {C_FIX}"
    assert info["caption"] == captions[0]


def test_bfatc_off_uses_only_the_fixed_prompt(bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = CADCCodec.from_bundle(bundles["fixed"])
    assert fixed.model.text.captioner is None
    spy = _Spy(fixed.model.text.tokenizer)
    monkeypatch.setattr(fixed.model.text, "tokenizer", spy)
    data = fixed.encode(fixed.analyze(_image()), Knobs(200, 100), (90, 70))
    _, info = fixed.decode_with_info(data)
    fixed.decode_with_info(data)
    assert spy.calls == [[C_FIX]]  # encoded once, then cached
    assert info["caption"] is None


def test_perturbed_decoder_model_is_caught_by_the_checksum(bundles: dict[str, Path], stream: bytes) -> None:
    model = load_model(bundles["caption"])
    with torch.no_grad():
        for p in model.h_s.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    perturbed = CADCCodec(model)
    with pytest.raises(ChecksumMismatch):
        perturbed.decode(stream)


def test_other_model_id_is_refused(codec: CADCCodec, stream: bytes) -> None:
    header, payload = bitstream.unpack(stream)
    other = bitstream.Header(**{**header.__dict__, "model_id": (header.model_id + 1) & 0xFFFF})
    with pytest.raises(ModelMismatch):
        codec.decode(bitstream.pack(other, payload))


@pytest.mark.parametrize("part", ["unet", "vae", "tokenizer", "captioner", "codec.safetensors"])
def test_missing_bundle_part_names_part_and_path(bundles: dict[str, Path], tmp_path: Path, part: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundles["caption"], broken)
    target = broken / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(BundleError) as err:
        load_model(broken)
    name = part.split(".")[0]
    assert f"'{name}'" in str(err.value) and str(broken) in str(err.value)


def test_embedded_bundle_without_weights_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.paths

    monkeypatch.setattr(gateway.paths, "bundle_dir", lambda name="cadc-tiny": tmp_path / name)
    with pytest.raises(BundleError, match="no weights"):
        CADCCodec.from_bundle()


_DECODE_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from gateway.codec.cadc.codec import CADCCodec
    codec = CADCCodec.from_bundle(sys.argv[2])
    data = open(sys.argv[3], "rb").read()
    _, sym = codec.decode_symbols(data)
    img = codec.decode(data)
    print("RESULT", hashlib.sha256(sym.z.tobytes() + sym.q.tobytes()).hexdigest(), hashlib.sha256(img.tobytes()).hexdigest())
    """
)


def test_decoding_is_independent_of_thread_count(bundles: dict[str, Path], codec: CADCCodec, tmp_path: Path) -> None:
    data = codec.encode(codec.analyze(_image(128, 192, seed=5)), Knobs(230, 90), (192, 128))
    path = tmp_path / "img.cadc"
    path.write_bytes(data)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _DECODE_SCRIPT, str(n), str(bundles["caption"]), str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for n in (1, 2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append([line for line in out.splitlines() if line.startswith("RESULT")][0])
    _, sym = codec.decode_symbols(data)
    here = hashlib.sha256(sym.z.tobytes() + sym.q.tobytes()).hexdigest()
    assert results[0] == results[1]
    assert results[0].split()[1] == here


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_bitstreams_raise_only_bitstream_errors(codec: CADCCodec, stream: bytes, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["random", "truncate", "flip", "oversize", "header_random"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=600))
    elif kind == "truncate":
        blob = stream[: data.draw(st.integers(0, len(stream) - 1))]
    elif kind == "flip":
        buf = bytearray(stream)
        for bit in data.draw(st.lists(st.integers(0, 8 * len(buf) - 1), min_size=1, max_size=4)):
            buf[bit // 8] ^= 1 << (bit % 8)
        blob = bytes(buf)
    elif kind == "oversize":
        blob = stream + data.draw(st.binary(min_size=1, max_size=64)) * 1000
    else:
        blob = stream[:3] + data.draw(st.binary(min_size=9, max_size=9)) + stream[12:]
    # Keep forged sizes small so the fuzzing stays fast (the size limit itself is checked by unpack).
    codec.max_pixels = 200_000
    try:
        out = codec.decode(blob)
    except BitstreamError:
        return
    # A corruption that slips past every check still yields a sane image.
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


def test_half_precision_pretrained_parts_read_the_same_symbols(bundles: dict[str, Path], codec: CADCCodec,
                                                               stream: bytes) -> None:
    """The GPU path on the CPU: UNet, VAE, CLIP and BLIP in bfloat16 under autocast; symbols stay float64-exact."""
    half = CADCCodec(load_model(bundles["caption"], dtype=torch.bfloat16), device="cpu", precision=torch.bfloat16)
    assert half.model.unet.dtype == torch.bfloat16 and half.model.text.captioner.dtype == torch.bfloat16
    assert half.model.g_s.net[0].weight.dtype == torch.float32  # the codec's own networks stay float32
    (_, exact), (_, halved) = codec.decode_symbols(stream), half.decode_symbols(stream)
    assert np.array_equal(exact.z, halved.z) and np.array_equal(exact.q, halved.q)
    picture, info = half.decode_with_info(stream)
    assert picture.shape == codec.decode(stream).shape and info["caption"] is not None


def test_device_and_precision_settings() -> None:
    from gateway.codec.cadc.devices import resolve_device, resolve_precision
    from gateway.errors import ConfigError

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32  # the CPU never runs half precision
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    assert resolve_precision("bf16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_y_at_one_sixteenth_codes_and_decodes(tmp_path: Path) -> None:
    """The y_downsample 16 layout (configs/models/cadc-tiny-y16.yaml) through the real coding path."""
    d = yaml.safe_load((TINY_YAML.parent / "cadc-tiny-y16.yaml").read_text())
    torch.manual_seed(0)
    model = load_model(create_bundle(CADCConfig.from_dict(d), tmp_path / "y16"))
    widen_gains(model, 6.0)
    codec = CADCCodec(model)
    w, h = 150, 100
    analysis = codec.analyze(_image(h, w, seed=5))
    knobs = Knobs(200, 60)
    data = codec.encode(analysis, knobs, (w, h))
    header, decoded = codec.decode_symbols(data)
    assert decoded.q.shape[-2:] == (128 // 16, 192 // 16)  # padded to 4·16 = 64 px
    assert np.array_equal(decoded.q, codec._quantize(analysis, knobs).q)
    assert abs(codec.estimate_bytes(analysis, knobs) - len(data)) < 0.05 * len(data) + 16
    assert codec.decode(data).shape == (h, w, 3)
    image, info = codec.decode_with_info(data[: len(data) * 2 // 3], partial=True)
    assert image.shape == (h, w, 3)
