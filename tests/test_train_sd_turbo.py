"""cadc-sd-turbo's training path end to end, on a tiny caption-mode model a user could have built the same way.

Local "SD-Turbo" and "BLIP" folders (tiny, random) -> ``satgw bundle create``
-> ``tools/train.py --init-bundle`` with the stages of
``configs/train/cadc-sd-turbo.yaml`` (shortened) -> checkpoints -> resume
-> export -> reload -> a decode whose BLIP caption conditions the UNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gateway.codec.base import Knobs
from gateway.codec.cadc.bundle import create_bundle
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.text import build_prompt
from gateway.codec.cadc.tiny_parts import write_tiny_sd_turbo
from gateway.errors import BundleError, ConfigError
from gateway.training.checkpoint import best_checkpoint, latest_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class _TinyLPIPS(torch.nn.Module):
    """Stands in for a TorchScript LPIPS file: (x, y) in [-1, 1] -> [B, 1, 1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) - self.conv(y)).pow(2).mean(dim=(1, 2, 3), keepdim=True)


def _perceptual_files(root: Path) -> tuple[Path, Path]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    lpips = root / "lpips.pt"
    torch.jit.script(_TinyLPIPS()).save(str(lpips))
    clip = root / "clip-vision"
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=224, patch_size=32,
                                                   projection_dim=8)).save_pretrained(str(clip))
    return lpips, clip


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:272, 0:300]
    for i in range(2):
        base = np.stack([xx / 300, yy / 272, (xx + yy) / 572], axis=-1) * 200 + rng.normal(0, 15, (272, 300, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def _recipe(root: Path, images: Path, lpips: Path, clip: Path) -> Path:
    """configs/train/cadc-sd-turbo.yaml with its stages cut to 2 steps and tiny data."""
    r = yaml.safe_load((CONFIGS / "train" / "cadc-sd-turbo.yaml").read_text())
    r.update(threads=1, amp=None, val_every=2, val_lams=2, log_every=1, ckpt_every=1, export_every_s=1.0e9,
             lpips_path=str(lpips), clip_path=str(clip))
    r["data"] = {"train": [str(images)], "val": str(images), "crop": 256, "batch": 1, "val_limit": 1,
                 "val_size": 256, "cache_mb": 1}
    for stage in r["stages"]:
        stage.update(steps=2, warmup=1)
        if "disc_start" in stage:
            stage["disc_start"] = 0
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd-turbo")
    cfg = write_tiny_sd_turbo(root / "downloads", CONFIGS / "models" / "cadc-sd-turbo.yaml")
    model_yaml = root / "cadc-sd-turbo.yaml"
    model_yaml.write_text(yaml.safe_dump(cfg))
    lpips, clip = _perceptual_files(root)
    return {"root": root, "model": model_yaml, "bundle": create_bundle(model_yaml, root / "bundle"),
            "recipe": _recipe(root, _images(root / "images"), lpips, clip)}


def test_every_stage_trains_resumes_exports_and_the_export_decodes_with_its_caption(user_setup, load_tool) -> None:
    torch.set_num_threads(1)
    train = load_tool("train")
    root, run, export = user_setup["root"], user_setup["root"] / "run", user_setup["root"] / "export"
    common = ["--model", str(user_setup["model"]), "--train", str(user_setup["recipe"]), "--out", str(run),
              "--export", str(export), "--no-progress", "--device", "cpu"]
    assert train.main([*common, "--init-bundle", str(user_setup["bundle"]), "--max-steps", "3"]) == 0
    assert latest_checkpoint(run).name == "ckpt-00000003.pt"
    assert (run / "parts" / "tokenizer").is_dir() and (run / "parts" / "caption_processor").is_dir()
    # The resume needs no bundle: the tokenizer and BLIP processor were kept in the run folder.
    assert train.main([*common, "--resume"]) == 0
    assert latest_checkpoint(run).name == "ckpt-00000004.pt"
    assert best_checkpoint(run) is not None  # scored by the validation of its stage, kept beside the newest two
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["kind"] == "train"]
    assert {r["stage"] for r in trained} == {"stage1", "stage2"} and max(r["step"] for r in trained) == 4
    assert {"gan", "lpips", "clip", "aux", "latent", "ms_ssim"} <= set(trained[-1])  # stage 2's terms all ran
    assert all(np.isfinite(r["loss"]) for r in trained)

    codec = CADCCodec.from_bundle(export)
    rng = np.random.default_rng(0)
    image = (rng.random((200, 260, 3)) * 255).astype(np.uint8)
    data = codec.encode(codec.analyze(image), Knobs(200, codec.rate_anchor_delta_code), (260, 200))
    prompts: list[str] = []
    encode_prompts = codec.model.text.encode_prompts
    codec.model.text.encode_prompts = lambda p, device: (prompts.extend(p), encode_prompts(p, device))[1]
    decoded, info = codec.decode_with_info(data)
    assert decoded.shape == image.shape
    assert info["caption"] and prompts == [build_prompt(info["caption"])]


def test_a_caption_model_without_tokenizer_says_where_to_get_one(user_setup, load_tool, tmp_path) -> None:
    cfg = yaml.safe_load(user_setup["model"].read_text())
    cfg["sources"] = {k: v for k, v in cfg["sources"].items() if k not in ("tokenizer", "captioner")}
    bare = tmp_path / "no-tokenizer.yaml"
    bare.write_text(yaml.safe_dump(cfg))
    with pytest.raises(BundleError, match="tokenizer and caption_processor.*--init-bundle"):
        load_tool("train").build_model(str(bare), [], None)
    # The bundle has them: a fresh run from it works, and takes its pretrained parts as they are.
    model = load_tool("train").build_model(str(bare), [], str(user_setup["bundle"]))
    assert model.text.tokenizer is not None and model.text.caption_processor is not None


def test_a_recipe_that_asks_for_lpips_without_its_file_fails_at_start(user_setup, load_tool, tmp_path) -> None:
    r = yaml.safe_load(user_setup["recipe"].read_text())
    r["lpips_path"] = str(tmp_path / "missing" / "lpips.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(r))
    from gateway.training.config import TrainConfig
    from gateway.training.data import ImageBank
    from gateway.training.trainer import Trainer

    cfg = TrainConfig.from_yaml(recipe)
    model = load_tool("train").build_model(str(user_setup["model"]), [], str(user_setup["bundle"]))
    with pytest.raises(ConfigError, match=f"stage2.*lpips.*{tmp_path / 'missing' / 'lpips.pt'}"):
        Trainer(model, cfg, tmp_path / "run", ImageBank(r["data"]["train"]), progress=False)
    r["stages"][1]["loss"]["lpips"] = 0.0  # explicitly off
    r["lpips_path"] = None
    recipe.write_text(yaml.safe_dump(r))
    Trainer(model, TrainConfig.from_yaml(recipe), tmp_path / "run", ImageBank(r["data"]["train"]), progress=False)


def test_the_recipe_trains_every_delta_the_rate_controller_may_pick() -> None:
    from gateway.codec.cadc.config import CADCConfig
    from gateway.training.config import TrainConfig

    recipe = TrainConfig.from_yaml(CONFIGS / "train" / "cadc-sd-turbo.yaml")
    model = CADCConfig.from_yaml(CONFIGS / "models" / "cadc-sd-turbo.yaml")
    assert tuple(recipe.delta_range) == tuple(model.codec.delta_range)
    assert recipe.keep_checkpoints == 2 and recipe.keep_best
