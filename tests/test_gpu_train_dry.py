"""The one-shot GPU training run, end to end on the CPU: pack -> train (dry run) -> pieces -> unpack -> decode.

A lent GPU gives one session 15 minutes, so ``tools/gpu_train_tiny.py`` must
work the first time it meets the GPU; this runs the very same script with
``--dry-run`` (tiny crops, two steps per stage) on a payload written by
``tools/pack_gpu_payload.py``'s own image code, and checks what a later
session relies on: the run's record, the weight pieces, and a bundle
unpacked from them that codes and decodes a picture.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gateway.training.device_bank import DeviceImageBank


def _write_pictures(folder, count: int, height: int, width: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        img = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1) + rng.normal(0, 8, (height, width, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"pic{i}.png")


@pytest.mark.timeout(180)
def test_dry_run_packs_trains_exports_and_unpacks(tmp_path, load_tool):
    pack = load_tool("pack_gpu_payload")
    gpu = load_tool("gpu_train_tiny")
    _write_pictures(tmp_path / "src" / "train", 3, 300, 420, seed=1)
    _write_pictures(tmp_path / "src" / "test", 2, 200, 200, seed=2)
    payload = tmp_path / "payload"
    data = pack.pack_images([tmp_path / "src" / "train"], tmp_path / "src" / "test", payload, short_side=256,
                            quality=90, val_count=1, val_size=128)
    assert data["train_images"] == 3 and data["val"]["images"] == 1
    with Image.open(next((payload / "data" / "train").iterdir())) as im:
        assert min(im.size) == 256  # scaled down to the short side

    out = tmp_path / "out"
    assert gpu.main(["--dry-run", "--out", str(out), "--payload", str(payload), "--budget-s", "300"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete", run.get("error")
    assert [s["name"] for s in run["stages"]] == ["vae", "codec-mse", "codec-gan"]
    assert all(s["steps"] == 2 and s["val"] for s in run["stages"])
    assert run["data"]["source"].endswith("train") and run["data"]["train_images"] == 3
    assert "lam512/psnr" in run["baseline"] and "vae_psnr" in run["baseline"]  # the shipped bundle, same crops
    assert run["scaling_factor"] > 0
    # Several pieces, each within the dry run's 8 MiB (a GPU run's: 15 MiB), holding every tensor once.
    pieces = run["weights"]["pieces"]
    assert len(pieces) > 1 and all(p["bytes"] < 8 * 2**20 + 2**16 for p in pieces)
    state: dict[str, torch.Tensor] = {}
    for p in pieces:
        state.update(load_file(str(out / p["file"])))
    assert len(state) == run["weights"]["tensors"]
    # The round trip: the unpacked bundle holds exactly the returned tensors and decodes a picture.
    assert run["round_trip"]["decoded"] == [160, 224, 3]
    bundle = out / "bundle"
    codec = load_file(str(bundle / "codec.safetensors"))
    assert all(torch.equal(codec[k], state[k]) for k in codec)
    assert "scaling_factor: " + str(run["scaling_factor"]) in (bundle / "config.yaml").read_text()
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "codec-gan" in card and "baseline" in card
    assert json.loads((bundle / "manifest.json").read_text())["model_id"] == run["round_trip"]["model_id"]


def test_unpack_refuses_a_damaged_piece(tmp_path, load_tool):
    """A piece whose bytes differ from run.json (a partial transfer) stops the unpack with its name."""
    unpack = load_tool("unpack_gpu_bundle")
    (tmp_path / "weights-00.safetensors").write_bytes(b"not the bytes that were listed")
    run = {"weights": {"pieces": [{"file": "weights-00.safetensors", "bytes": 30, "sha256": "0" * 64}]}}
    with pytest.raises(SystemExit, match="does not match run.json"):
        unpack.read_pieces(tmp_path, run)


def test_device_bank_cuts_windows_with_flips():
    """Every crop is a contiguous window of one image, mirrored or not, drawn wholly on the bank's device."""
    h, w = 40, 56
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    coded = torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.long)]).to(torch.uint8)
    other = coded.clone()
    other[2] = 200  # the second image is told apart by its third channel
    bank = DeviceImageBank([coded, other[:, :30, :50]], "cpu", min_side=16, seed=3)
    assert bank.data.shape == (2, 3, h, w)
    batch = bank.crops(64, 16)
    assert batch.shape == (64, 3, 16, 16) and batch.dtype == torch.float32
    pixels = (batch * 255).round().long()
    flipped = 0
    for crop in pixels:
        r, c, tag = crop[0], crop[1], int(crop[2, 0, 0])
        limit_h, limit_w = (h, w) if tag == 0 else (30, 50)
        assert (r[:, :1] == r).all() and (r[1:, 0] - r[:-1, 0] == 1).all()  # rows in order, never flipped
        step = c[0, 1:] - c[0, :-1]
        assert (step == 1).all() or (step == -1).all()
        flipped += int(step[0] == -1)
        assert int(r.max()) < limit_h and int(c.max()) < limit_w  # inside the image, never the padding
    assert 0 < flipped < 64
    with pytest.raises(ValueError, match="larger than the smallest image side"):
        bank.crops(1, 31)


def test_pure_wheel_from_sdist(tmp_path, load_tool):
    """crcmod ships only an sdist: its Python 3 package becomes a py3-none-any wheel with a valid RECORD."""
    pack = load_tool("pack_gpu_payload")
    sdist = tmp_path / "demo-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (("demo-1.0/python3/demo/__init__.py", b"X = 1\n"), ("demo-1.0/python3/demo/test.py", b""),
                           ("demo-1.0/python2/demo/__init__.py", b"X = 2\n"), ("demo-1.0/LICENSE", b"MIT\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    wheel = pack.pure_wheel_from_sdist(sdist, "demo", "1.0", tmp_path)
    assert wheel.name == "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("demo/__init__.py") == b"X = 1\n"
        assert "demo/test.py" not in names and "demo-1.0.dist-info/LICENSE" in names
        assert "Tag: py3-none-any" in zf.read("demo-1.0.dist-info/WHEEL").decode()
        record = zf.read("demo-1.0.dist-info/RECORD").decode().splitlines()
    assert {line.split(",")[0] for line in record} == names
    with pytest.raises(SystemExit, match="Kodak"):
        pack.refuse_kodak([tmp_path / "shared" / "data" / "kodak"])
