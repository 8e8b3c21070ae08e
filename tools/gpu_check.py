#!/usr/bin/env python
"""The GPU check of the paper's model: one script, one GPU, under 8 minutes, one JSON line.

    python tools/gpu_check.py [--images shared/data/kodak] [--out /tmp/gpu-check]     # on a CUDA host
    python tools/gpu_check.py --dry-run                                              # the same steps, tiny, on the CPU

Steps (each timed; a failing step is reported in the JSON and the others still run):

1. ``build``: a random-init, full-size ``cadc-sd-turbo`` bundle (initialised on the GPU, saved).
2. ``train``: 20 steps at 512² in bf16 autocast with ``configs/train/cadc-sd-turbo.yaml``'s stages
   (10 of stage 1, 10 of stage 2 with the whole UNet and the GAN; LPIPS and CLIP switched off: no
   weights here), from that bundle as ``tools/train.py --init-bundle`` starts; s/step and peak memory.
3. ``decode``: every image of ``--images`` (the 24 Kodak images) encoded on the CPU by the sender's
   light codec (4 frames, rate-controlled), then decoded on the GPU (UNet, VAE, CLIP, BLIP in fp16):
   time per image (the first, with its warm-up, reported apart), peak GPU memory, the captions.
4. ``symbols``: each of those CPU-encoded bitstreams entropy-decodes to identical symbols on the
   GPU host's decoder and on a CPU decoder (and both pass the streams' checksums).
5. ``tiny_train``: ``cadc-tiny`` codec-stage training steps on the GPU vs the CPU (s/step each).

``--dry-run`` runs every step on the CPU with tiny models (a caption-mode stand-in for
cadc-sd-turbo, 1 + 1 training steps at 256² in float32, 2 images): what the test suite
exercises, so the script is known to work before a GPU is at hand.  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEFAULT_IMAGES = next((p for p in (ROOT / "shared" / "data" / "kodak", ROOT.parent / "shared" / "data" / "kodak",
                                   Path("/work/shared/data/kodak")) if p.is_dir()), None)


class Check:
    """Runs the steps, each timed and guarded, and collects one result dict."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {"ok": True}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_gb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2) if self.device.type == "cuda" else None

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> Any:
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            out = fn()
            self.result[name] = {**out, "seconds": round(time.perf_counter() - t0, 2)}
            return out
        except Exception as exc:  # report and go on: one JSON line whatever happens
            traceback.print_exc()
            self.result[name] = {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 2)}
            self.result["ok"] = False
            return None


def load_images(folder: Path | None, limit: int | None) -> list[tuple[str, np.ndarray]]:
    """``folder``'s images (sorted), or generated 768x512 pictures when there is none."""
    from PIL import Image

    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
        return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in files]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:768]
    out = []
    for i in range(limit or 4):
        base = np.stack([xx / 768, yy / 512, ((xx + yy) % 97) / 97], -1) * 200 + rng.normal(0, 12, (512, 768, 3))
        out.append((f"generated{i}", np.clip(base, 0, 255).astype(np.uint8)))
    return out


def check_recipe(base: Path, images: Path, crop: int, steps: tuple[int, ...], amp: str | None,
                 batch: int | None = None) -> dict[str, Any]:
    """``base`` (a shipped recipe) cut to its last ``len(steps)`` stages of ``steps`` steps, no validation,
    LPIPS / CLIP off (no weights on a bare GPU host)."""
    r = yaml.safe_load(base.read_text())
    r.update(amp=amp, val_every=0, log_every=1000, ckpt_every=10**9, export_every_s=1e12,
             lpips_path=None, clip_path=None)
    r["data"] = {**r["data"], "train": [str(images)], "val": None, "crop": crop}
    if batch:
        r["data"]["batch"] = batch
    stages = r["stages"][-len(steps):]
    for stage, n in zip(stages, steps):
        stage.update(steps=n, warmup=1, crop=None if stage.get("crop") is None else crop,
                     batch=None if stage.get("batch") is None or not batch else batch)
        stage["loss"] = {**stage["loss"], "lpips": 0.0, "clip": 0.0}
        if "disc_start" in stage:
            stage["disc_start"] = 0
        if stage.get("pixel_window"):
            stage["pixel_window"] = min(stage["pixel_window"], crop - 8 * 10)
    r["stages"] = stages
    return r


def train_steps(check: Check, model_yaml: Path, recipe: dict[str, Any], bundle: Path | None, device: torch.device,
                out: Path) -> dict[str, Any]:
    """Build the model as ``tools/train.py`` does and time the recipe's steps (no checkpoints)."""
    from gateway.training.build import build_model
    from gateway.training.config import TrainConfig
    from gateway.training.data import ImageBank
    from gateway.training.trainer import Trainer

    cfg = TrainConfig.from_dict(recipe)
    model = build_model(model_yaml, [], str(bundle) if bundle else None, log=lambda line: None)
    trainer = Trainer(model, cfg, out, ImageBank(cfg.data.train, cache_mb=cfg.data.cache_mb), device=device,
                      progress=False)
    check.reset_peak()
    first = cfg.stages[0].steps
    trainer.run(max_steps=1, persist=False)  # warm-up (cudnn autotuning, latent targets)
    check.sync()
    t0 = time.perf_counter()
    last = trainer.run(max_steps=cfg.total_steps - 1, persist=False)
    check.sync()
    seconds = time.perf_counter() - t0
    return {"steps": cfg.total_steps, "stage_steps": [s.steps for s in cfg.stages], "crop": cfg.data.crop,
            "batch": cfg.data.batch, "amp": cfg.amp, "s_per_step": round(seconds / max(1, cfg.total_steps - 1), 3),
            "loss_finite": bool(math.isfinite(last.get("loss", float("nan")))), "peak_gb": check.peak_gb(),
            "first_stage_steps": first}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="images to encode and decode (Kodak)")
    p.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    p.add_argument("--device", default="cuda", help="the GPU to check (default cuda)")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny models (tests)")
    p.add_argument("--frames", type=int, default=4, help="frame budget of each encoded image")
    args = p.parse_args(argv)

    from gateway.codec.cadc.devices import resolve_device

    dry = args.dry_run
    device = torch.device("cpu") if dry else resolve_device(args.device)
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(device)
    check.result["mode"] = "dry-run (CPU, tiny models)" if dry else "full"
    check.result["env"] = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
    }
    images = load_images(args.images, 2 if dry else None)
    if dry:  # a 384x256 centre crop: the same path, a fraction of the CPU time
        images = [(n, np.ascontiguousarray(im[(im.shape[0] - 256) // 2:][:256, (im.shape[1] - 384) // 2:][:, :384]))
                  for n, im in images]
    image_dir = work / "images"
    image_dir.mkdir(exist_ok=True)
    from PIL import Image

    for name, img in images:
        Image.fromarray(img).save(image_dir / f"{name}.png")

    # 1. the bundle
    model_yaml = CONFIGS / "models" / "cadc-sd-turbo.yaml"
    bundle = work / "bundle"

    def build() -> dict[str, Any]:
        nonlocal model_yaml
        from gateway.codec.cadc.bundle import create_bundle
        from gateway.codec.cadc.tiny_parts import random_bundle, write_tiny_sd_turbo

        if dry:
            cfg = write_tiny_sd_turbo(work / "downloads", model_yaml)
            model_yaml = work / "cadc-sd-turbo-tiny.yaml"
            model_yaml.write_text(yaml.safe_dump(cfg))
            create_bundle(model_yaml, bundle)
        else:
            random_bundle(model_yaml, bundle, device=str(device))
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
        return {"bundle_gb": round(size / 2**30, 2), "config": model_yaml.name}

    check.step("build", build)

    # 2. training steps of the paper's recipe
    # The dry run trains in float32 at batch 1: the CPU's bfloat16 convolutions are slow reference kernels.
    crop = 256 if dry else 512
    steps = (1, 1) if dry else (10, 10)
    recipe = check_recipe(CONFIGS / "train" / "cadc-sd-turbo.yaml", image_dir, crop, steps,
                          None if dry else "bf16", batch=1 if dry else None)
    check.step("train", lambda: train_steps(check, model_yaml, recipe, bundle, device, work / "run"))

    # 3 + 4. CPU encode, GPU decode, identical symbols
    streams: list[tuple[str, bytes]] = []
    decoders: list[Any] = []  # the GPU decoder, kept for the symbol check

    def decode() -> dict[str, Any]:
        from gateway.codec.cadc.codec import CADCCodec
        from gateway.ratecontrol import Budget, fit

        sender = CADCCodec.from_bundle(bundle, device="cpu", encoder_only=True)
        for name, img in images:
            streams.append((name, fit(sender, img, Budget(args.frames, 450)).bitstream))
        ground = CADCCodec.from_bundle(bundle, device=device)
        check.reset_peak()
        times, captions = [], []
        for _, data in streams:
            check.sync()
            t0 = time.perf_counter()
            picture, info = ground.decode_with_info(data)
            check.sync()
            times.append(time.perf_counter() - t0)
            captions.append(info["caption"])
            assert picture.dtype == np.uint8 and picture.ndim == 3
        rest = times[1:] or times
        decoders.append(ground)
        return {"images": len(times), "first_s": round(times[0], 3), "median_s": round(statistics.median(rest), 3),
                "mean_s": round(statistics.mean(rest), 3), "max_s": round(max(rest), 3), "peak_gb": check.peak_gb(),
                "precision": str(ground.precision).replace("torch.", ""), "bytes": [len(d) for _, d in streams],
                "captions": captions[:3], "target_s": 0.5}

    check.step("decode", decode)

    def symbols() -> dict[str, Any]:
        from gateway.codec.cadc.codec import CADCCodec

        ground = decoders[0] if decoders else CADCCodec.from_bundle(bundle, device=device)
        cpu = CADCCodec.from_bundle(bundle, device="cpu", encoder_only=True)  # entropy decoding needs no decoder
        same = 0
        for _, data in streams:
            (_, a), (_, b) = ground.decode_symbols(data), cpu.decode_symbols(data)
            same += int(np.array_equal(a.z, b.z) and np.array_equal(a.q, b.q))
        if same != len(streams):
            raise AssertionError(f"{len(streams) - same} of {len(streams)} streams decode to other symbols on {device}")
        return {"streams": len(streams), "identical": same}

    check.step("symbols", symbols)
    decoders.clear()

    # 5. cadc-tiny training steps, GPU vs CPU
    def tiny_train() -> dict[str, Any]:
        from gateway.codec.cadc.bundle import create_bundle

        tiny_yaml = CONFIGS / "models" / "cadc-tiny.yaml"
        tiny_bundle = create_bundle(tiny_yaml, work / "tiny-bundle")
        tiny_recipe = check_recipe(CONFIGS / "train" / "cadc-tiny.yaml", image_dir, 128 if dry else 256,
                                   (2 if dry else 8,), None, batch=1 if dry else None)
        out = {}
        for where in ([torch.device("cpu")] if dry else [device, torch.device("cpu")]):
            res = train_steps(check, tiny_yaml, tiny_recipe, tiny_bundle, where, work / f"tiny-{where.type}")
            out[where.type] = {"s_per_step": res["s_per_step"], "steps": res["steps"]}
        if "cuda" in out:
            out["speedup"] = round(out["cpu"]["s_per_step"] / out["cuda"]["s_per_step"], 1)
        return out

    check.step("tiny_train", tiny_train)
    print(json.dumps(check.result, default=str), flush=True)
    return 0 if check.result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
