"""CADC across real daemons: a light sender (encoder tensors only) and a ground station keeping two bundles.

The sender encodes with a copy of the bundle that holds only ``config.yaml``,
``codec.safetensors`` and ``manifest.json`` (no UNet, VAE, CLIP or BLIP on
its disk) and its process imports neither diffusers nor transformers; the
ground station decodes pictures of the old and the new model after an
update, each with the bundle its bitstream's model id names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.codec import bitstream
from gateway.codec.cadc.bundle import CODEC_WEIGHTS, CONFIG_FILE, MANIFEST, bundle_model_id, create_bundle, model_id_of
from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.tiny_parts import write_text_parts
from gateway.codec.registry import decoder_for
from gateway.errors import ModelMismatch
from gateway.eval.launcher import wait_for
from gateway.paths import config_dir
from test_daemons import Rig, make_images

TINY_YAML = config_dir() / "models" / "cadc-tiny.yaml"


def _caption_config(sources: dict[str, str], seed_note: str) -> CADCConfig:
    d = yaml.safe_load(TINY_YAML.read_text())
    d["codec"].update(text_mode="caption", bfatc=True)
    d["description"] = seed_note
    d["sources"] = sources
    return CADCConfig.from_dict(d)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    sources = write_text_parts(root / "parts", hidden_size=32)
    old = create_bundle(_caption_config(sources, "before the update"), root / "old", seed=1)
    new = create_bundle(_caption_config(sources, "after the update"), root / "new", seed=2)
    sender_copy = root / "sender-old"
    sender_copy.mkdir()
    for name in (CONFIG_FILE, CODEC_WEIGHTS, MANIFEST):
        shutil.copy2(old / name, sender_copy / name)
    return {"old": old, "new": new, "sender-old": sender_copy}


def test_the_manifest_gives_the_sender_the_model_id_without_the_decoder_parts(bundles: dict[str, Path]) -> None:
    assert bundle_model_id(bundles["sender-old"]) == model_id_of(bundles["old"]) != model_id_of(bundles["new"])
    # A manifest that no longer describes the files is not trusted: the id is hashed again.
    stale = bundles["sender-old"].parent / "stale"
    shutil.copytree(bundles["old"], stale)
    shutil.copy2(bundles["new"] / CODEC_WEIGHTS, stale / CODEC_WEIGHTS)  # same size, other weights
    assert bundle_model_id(stale) == model_id_of(stale) != model_id_of(bundles["old"])


def test_a_bitstream_of_a_model_the_ground_lacks_names_its_id(bundles: dict[str, Path]) -> None:
    header = bitstream.Header(codec_id=bitstream.CODEC_IDS["cadc"], model_id=0x1234, width=64, height=64,
                              scale_code=0, lam_code=0, delta_code=0, checksum=0)
    with pytest.raises(ModelMismatch, match=r"model 1234.*" + f"{model_id_of(bundles['new']):04x}.*'bundles'"):
        decoder_for(header, (str(bundles["new"]),), device="cpu")


def test_light_sender_and_a_ground_station_decoding_across_a_model_update(bundles: dict[str, Path], tmp_path) -> None:
    ground_cfg = yaml.safe_load((config_dir() / "daemons" / "receiver.yaml").read_text())
    ground_cfg.update(bundle=str(bundles["new"]), bundles=[str(bundles["old"])], device="auto")
    (tmp_path / "receiver.yaml").write_text(yaml.safe_dump(ground_cfg))
    rig = Rig(tmp_path / "rig", preset="clean", time_scale=20.0,
              sender_args=["--bundle", str(bundles["sender-old"])],
              receiver_args=["--config", str(tmp_path / "receiver.yaml")])
    env_key = "PYTHONPROFILEIMPORTTIME"  # the sender logs every module it imports
    try:
        os.environ[env_key] = "1"
        rig.start(("link", "receiver"))
        rig.start(("sender",))
        os.environ.pop(env_key)
        images = make_images(2, size=96)
        first = rig.submit(images[0][0], images[0][1], codec="cadc", packets=4)
        wait_for(lambda: first in rig.outputs(), 300, what="the old model's picture")
        log = (rig.tmp / "sender.log").read_text()
        assert "import time:" in log and "gateway.codec.cadc.codec" in log  # the import log covers the encode
        heavy = [line for line in log.splitlines() if line.startswith("import time:")
                 and line.split("|")[-1].strip().split(".")[0] in ("diffusers", "transformers")]
        assert not heavy, heavy[:3]
        # The model update: the sender now encodes with the new bundle (the whole folder, this time).
        rig.terminate("sender")
        cmd = rig.commands["sender"]
        cmd[cmd.index("--bundle") + 1] = str(bundles["new"])
        rig.restart("sender")
        second = rig.submit(images[1][0], images[1][1], codec="cadc", packets=4)
        outs = wait_for(lambda: second in rig.outputs() and rig.outputs(), 300, what="the new model's picture")
        assert outs[first]["setting"]["model_id"] == f"{model_id_of(bundles['old']):04x}"
        assert outs[second]["setting"]["model_id"] == f"{model_id_of(bundles['new']):04x}"
        assert outs[first]["caption"] and outs[second]["caption"]
    finally:
        os.environ.pop(env_key, None)
        rig.stop()


def test_satgw_decode_picks_the_bundle_by_model_id(bundles: dict[str, Path], tmp_path, capsys) -> None:
    from gateway.cli.images import decode_main
    from gateway.codec.base import Knobs
    from gateway.codec.cadc.codec import CADCCodec

    enc = CADCCodec.from_bundle(bundles["sender-old"], encoder_only=True)
    image = np.zeros((64, 96, 3), dtype=np.uint8) + 120
    (tmp_path / "a.sgw").write_bytes(enc.encode(enc.analyze(image), Knobs(200, 100), (96, 64)))
    args = [str(tmp_path / "a.sgw"), "-o", str(tmp_path / "a.png"), "--device", "cpu", "--bundle", str(bundles["new"])]
    assert decode_main(args) == 1
    assert f"model {enc.model_id:04x}" in capsys.readouterr().err
    assert decode_main([*args, "--bundle", str(bundles["old"])]) == 0
    assert (tmp_path / "a.png").is_file()


def test_the_encoder_half_reads_its_tensors_only_the_colour_correction_is_the_decoders(bundles: dict[str, Path]) -> None:
    """A bundle with the decoder's colour correction and DCVC-DC's channel groups: the sender loads its encoder
    half from the three-file copy, with exactly the encoder's tensors (no colour, g_s or auxiliary decoder)."""
    from safetensors import safe_open

    from gateway.codec.cadc.bundle import load_encoder
    from gateway.codec.cadc.encoder import CADCEncoder, is_encoder_tensor
    from gateway.codec.cadc.model import CADCModel

    cfg = CADCConfig.from_yaml(bundles["old"] / CONFIG_FILE)
    assert cfg.codec.color_correction and cfg.codec.context_groups == 4
    with safe_open(str(bundles["old"] / CODEC_WEIGHTS), framework="pt") as f:
        stored = set(f.keys())
    assert any(k.startswith("color.") for k in stored)
    encoder = load_encoder(bundles["sender-old"])
    assert type(encoder) is CADCEncoder and not isinstance(encoder, CADCModel)
    names = set(encoder.state_dict())
    assert names == {k for k in stored if is_encoder_tensor(k)}
    assert not any(k.split(".")[0] in ("color", "g_s", "aux_decoder", "unet", "vae", "text") for k in names)
    assert not hasattr(encoder, "color") and encoder.config.codec.color_correction
    assert encoder.model_id == model_id_of(bundles["old"])
