#!/usr/bin/env python
"""Train cadc-tiny on one GPU inside a hard wall-clock budget; return the weights in pieces and a JSON log.

    bash tools/gpu_train_tiny.sh                                        # on the lent GPU host (docs/gpu_run.md)
    bash tools/gpu_train_tiny.sh --init-bundle gateway/bundles/cadc-tiny   # the alternative: continue v2
    python tools/gpu_train_tiny.py --dry-run --out /tmp/gpu-dry          # the same path, tiny, on the CPU

A lent GPU machine gives one session 15 minutes in all and one command at
most 10, so the run is planned by the clock, not by step counts:

1. Data: the payload's JPEGs (``tools/pack_gpu_payload.py``) go onto the GPU
   once as one padded uint8 tensor; every batch is cut there
   (:class:`gateway.training.device_bank.DeviceImageBank`).
2. Model and baseline: a fresh run builds ``configs/models/cadc-tiny-gpu.yaml``
   and copies the shipped bundle's codec and UNet tensors wherever names and
   shapes agree (``--warm-start``); ``--init-bundle`` continues a bundle as
   it is.  The shipped bundle is validated on the same held-out crops, so
   the log compares like with like before any later evaluation.
3. Stages: the recipe's stages in order; each gets the share of the time
   left that its ``steps`` have of the remaining stages' steps.  Its first
   steps measure the speed and the log states the steps that will fit; the
   learning rate follows warmup (steps) then a cosine over the stage's
   *time*, so the anneal ends when the time does, whatever the speed.  The
   GAN term starts at the same share of the stage as the recipe's
   ``disc_start`` has of its ``steps``.  After a ``vae`` stage the latent's
   scale is measured and set (``vae.scaling_factor`` = 1 / std, as
   ``tools/vae_scale.py``).
4. Output: after every stage, the weights as safetensors pieces of at most
   15 MiB (float32; float16 only if float32 would not fit the 64 MiB a run
   returns), ``config.yaml`` and ``run.json`` (steps, s/step, losses, val
   PSNR / MS-SSIM / bpp at three λ, the baseline's) in ``--out``, so an
   interrupted run still returns its last finished stage.
   ``tools/unpack_gpu_bundle.py`` turns them into a bundle.

On CUDA: bf16 autocast for the networks (losses and rates in float32),
TF32, channels-last, cuDNN autotuning, fused AdamW, one host sync per step.
The first steps of a stage fall back (smaller batch on out-of-memory, then
no channels-last, then float32) instead of failing.  SIGINT / SIGTERM (the
shell wrapper's ``timeout``) stop training and export what there is.

``--dry-run``: CPU, float32, tiny crops and batches, two steps per stage,
shards of 8 MiB, then the unpack round trip: the returned pieces become a
bundle that :class:`~gateway.codec.cadc.codec.CADCCodec` loads, codes and
decodes (tests/test_gpu_train_dry.py).  Without a payload it trains on
generated pictures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import platform
import signal
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU host runs a bare checkout (no pip install)
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gateway.errors import ConfigError  # noqa: E402
from gateway.training.config import StageConfig, TrainConfig  # noqa: E402

DEFAULT_MODEL = ROOT / "configs" / "models" / "cadc-tiny-gpu.yaml"
DEFAULT_RECIPE = ROOT / "configs" / "train" / "cadc-tiny-gpu.yaml"
CONTINUE_RECIPE = ROOT / "configs" / "train" / "cadc-tiny-gpu-continue.yaml"
BASELINE_BUNDLE = ROOT / "gateway" / "bundles" / "cadc-tiny"
PAYLOAD = ROOT / ".gpu"
MIB = 2**20
#: Largest returned file is 16 MiB; a margin for safetensors' header.
SHARD_BYTES = 15 * MIB
#: At most 8 files come back, 64 MiB together: run.json, config.yaml and train.log take three.
MAX_SHARDS = 5
MAX_WEIGHT_BYTES = 56 * MIB
#: Seconds kept at the end of the budget for the last validation, the export and the log.
RESERVE_S = 30.0
#: Steps of each stage that may fall back (smaller batch, no channels-last, float32) instead of failing.
FALLBACK_STEPS = 3
#: Steps before the speed is measured (cuDNN autotuning, allocator growth) and steps measured.
WARM_STEPS, MEASURE_STEPS = 3, 10
WEIGHTS_PREFIX = "weights-"
RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"


# ----------------------------------------------------------------------------------------------- the log
class RunLog:
    """The run's record (``run.json``) and its progress lines (stdout, flushed: the device returns the tail)."""

    def __init__(self, out: Path, start: float) -> None:
        self.out, self.start = out, start
        self.record: dict[str, Any] = {"status": "running", "events": [], "stages": []}

    def event(self, text: str) -> None:
        """Print a progress line and keep it in the record."""
        line = f"[gpu_train +{time.time() - self.start:6.1f}s] {text}"
        print(line, flush=True)
        self.record["events"].append(line)

    def save(self) -> None:
        """Write ``run.json`` atomically (a kill never leaves half a file)."""
        self.record["elapsed_s"] = round(time.time() - self.start, 1)
        tmp = self.out / f".{RUN_JSON}.tmp"
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / RUN_JSON)


@dataclasses.dataclass
class Settings:
    """How this run computes: device, precision, memory format, sizes of a dry run."""

    device: torch.device
    amp: bool
    channels_last: bool
    dry: bool
    max_steps: int | None  # per stage (dry runs)
    val_every_s: float
    log_every_s: float
    shard_bytes: int

    def autocast(self) -> Any:
        """bf16 autocast for the networks when ``amp`` is on."""
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# ----------------------------------------------------------------------------------------------- data
def load_folder(folder: Path, limit: int | None = None, threads: int = 8) -> list[torch.Tensor]:
    """The (first ``limit``) images in ``folder`` as ``[3,H,W]`` uint8 tensors, decoded in threads (PIL frees the GIL)."""
    from gateway.training.data import list_images, load_image

    paths = list_images([folder])[:limit]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(load_image, paths))


def generated_images(count: int, height: int, width: int, seed: int) -> list[torch.Tensor]:
    """Smooth colour fields with edges and noise: stand-ins for photographs when no payload is packed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(count):
        a, b, c = rng.uniform(0.5, 3.0, 3)
        img = np.stack([np.sin(xx / width * a * math.pi), np.cos(yy / height * b * math.pi),
                        np.sin((xx + yy) / (width + height) * c * math.pi)], 0) * 90 + 128
        img[:, : height // 2, : width // 3] += rng.uniform(-60, 60, (3, 1, 1))  # a hard-edged patch
        img += rng.normal(0, 6, img.shape)
        out.append(torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def validation_batches(images: list[torch.Tensor], size: int, multiple: int, device: torch.device,
                       limit: int) -> list[torch.Tensor]:
    """Centre crops (:func:`gateway.training.data.center_crops`) stacked into one batch per crop shape."""
    from gateway.training.data import ImageBank, center_crops

    crops = center_crops(ImageBank.from_tensors(images[:limit]), size, multiple)
    shapes: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for c in crops:
        shapes.setdefault(tuple(c.shape), []).append(c)
    return [torch.cat(group).to(device) for group in shapes.values()]


# ----------------------------------------------------------------------------------------------- model
def build(args: argparse.Namespace, log: RunLog, loaded: dict[str, Any]) -> Any:
    """The model this run trains: the GPU config fresh, or the init bundle's own config and weights.

    ``loaded`` maps bundle paths to models already loaded (the baseline), so
    one bundle is read once for both the warm start and the baseline.
    """
    from gateway.training.build import build_model

    if args.init_bundle:
        config = Path(args.init_bundle) / "config.yaml"
        return build_model(config, args.set, str(args.init_bundle), log=log.event)
    model = build_model(args.model, args.set, None, log=log.event)
    if str(args.warm_start) != "none":
        # The codec's networks and the UNet start from the shipped bundle wherever names and shapes agree (as
        # run 4 of the model card did from v1): a few minutes from random weights would not get as far.  The new
        # VAE is left out on purpose; l_T's and the VAE latent's width change the few tensors that touch them.
        from gateway.codec.cadc.model import CODEC_MODULES, CODEC_PARAMS
        from gateway.training.checkpoint import warm_start

        source = load_bundle(args.warm_start, loaded)
        report = warm_start(model, source.state_dict(), [*[f"{m}." for m in CODEC_MODULES], *CODEC_PARAMS, "unet."])
        log.record["warm_start"] = {"bundle": str(args.warm_start), "copied": len(report["copied"]),
                                    "reshaped": report["reshaped"], "missing": report["missing"]}
        log.event(f"warm start from {args.warm_start}: {len(report['copied'])} tensors copied, "
                  f"{len(report['reshaped'])} left fresh for shape ({', '.join(report['reshaped'])})")
    return model


def load_bundle(path: Path, loaded: dict[str, Any]) -> Any:
    """A bundle's model on the CPU, loaded once per run."""
    from gateway.codec.cadc.bundle import load_model

    key = str(Path(path).resolve())
    if key not in loaded:
        loaded[key] = load_model(path)
    return loaded[key]


def set_scaling_factor(model: Any, factor: float) -> None:
    """Put the VAE's latent scale into the diffusers VAE (what decoding uses) and the model config (what is saved)."""
    model.vae.register_to_config(scaling_factor=factor)
    model.config.vae["scaling_factor"] = factor


@torch.no_grad()
def latent_std(model: Any, crops: Callable[[], torch.Tensor], batches: int) -> float:
    """Standard deviation of the VAE's unscaled posterior mean over ``batches`` batches of training crops."""
    total = total_sq = count = 0.0
    shift = getattr(model.vae.config, "shift_factor", None) or 0.0
    for _ in range(batches):
        lat = model.vae.encode(crops() * 2.0 - 1.0).latent_dist.mean.double() - shift
        total += float(lat.sum())
        total_sq += float((lat * lat).sum())
        count += lat.numel()
    mean = total / count
    return math.sqrt(max(total_sq / count - mean * mean, 1e-12))


# ----------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: Any, batches: list[torch.Tensor], kind: str, lams: list[float]) -> dict[str, float]:
    """The trainer's validation (``Trainer.validate``) on whole batches: float32, Δ = 1, estimated bpp.

    ``vae``: PSNR / MS-SSIM of the VAE round trip; ``codec``: PSNR, MS-SSIM
    and bpp at each λ, keyed ``lam<λ>/...``.
    """
    from gateway.training.losses import bits_per_pixel, ms_ssim_loss
    from gateway.training.trainer import psnr_8bit

    was_training = model.training
    model.eval()
    record: dict[str, float] = {}
    n = sum(b.shape[0] for b in batches)

    def mean(values: list[torch.Tensor]) -> float:
        return float(torch.cat(values).sum()) / n

    if kind == "vae":
        ps, ms = [], []
        for x in batches:
            x_hat = model.vae_decode(model.vae_encode(x)).float().clamp(0, 1)
            ps.append(psnr_8bit(x, x_hat))
            ms.append(1 - ms_ssim_loss(x, x_hat))
        record.update(vae_psnr=mean(ps), vae_ms_ssim=mean(ms))
    else:
        for lam in lams:
            ps, ms, bp = [], [], []
            for x in batches:
                b = x.shape[0]
                out = model(x, torch.full((b,), float(lam), device=x.device), torch.ones(b, device=x.device))
                x_hat = out["x_hat"].float().clamp(0, 1)
                bp.append(bits_per_pixel(out["bits_y"], out["bits_z"], x.shape[-2], x.shape[-1]).float())
                ps.append(psnr_8bit(x, x_hat))
                ms.append(1 - ms_ssim_loss(x, x_hat))
            key = f"lam{lam:.3g}"
            record.update({f"{key}/psnr": mean(ps), f"{key}/ms_ssim": mean(ms), f"{key}/bpp": mean(bp)})
    model.train(was_training)
    return {k: round(v, 5) for k, v in record.items()}


def validation_lams(model: Any, count: int) -> list[float]:
    """The trainer's validation λs: ``count`` points log-spaced from the model's λ_max down to λ_min."""
    lo, hi = (float(v) for v in model.lam_range)
    if count <= 1:
        return [math.sqrt(lo * hi)]
    return [float(v) for v in np.exp(np.linspace(math.log(hi), math.log(lo), count))]


# ----------------------------------------------------------------------------------------------- export
def export(model: Any, out: Path, log: RunLog, shard_bytes: int) -> None:
    """Write the model as safetensors pieces + ``config.yaml``, then ``run.json`` naming the pieces.

    float32 unless that would exceed what a run returns (then float16; the
    unpack casts back).  Old pieces are removed first so a shorter export
    never leaves stale ones beside it.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    f32_bytes = sum(v.numel() * (4 if v.is_floating_point() else v.element_size()) for v in state.values())
    dtype = torch.float32
    if f32_bytes > MAX_WEIGHT_BYTES or f32_bytes > shard_bytes * MAX_SHARDS:
        dtype = torch.float16
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    if len(shards) > MAX_SHARDS and shard_bytes >= SHARD_BYTES:
        raise RuntimeError(f"{len(shards)} weight pieces: more than the {MAX_SHARDS} files a run may return")
    for old in out.glob(f"{WEIGHTS_PREFIX}*.safetensors"):
        old.unlink()
    listed = []
    for i, shard in enumerate(shards):
        name = f"{WEIGHTS_PREFIX}{i:02d}.safetensors"
        tmp = out / f".{name}.tmp"
        save_file(shard, str(tmp), metadata={"piece": f"{i + 1}/{len(shards)}"})
        os.replace(tmp, out / name)
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        listed.append({"file": name, "bytes": (out / name).stat().st_size, "sha256": digest, "tensors": len(shard)})
    model.config.to_yaml(out / CONFIG_YAML)
    log.record["weights"] = {"dtype": str(dtype).replace("torch.", ""), "pieces": listed, "tensors": len(state),
                             "parameters": int(sum(v.numel() for v in state.values()))}
    log.save()


# ----------------------------------------------------------------------------------------------- training
class StageRunner:
    """Runs one stage for a given number of seconds (or steps, in a dry run); see the module docstring."""

    def __init__(self, model: Any, cfg: TrainConfig, bank: Any, settings: Settings, log: RunLog,
                 val_batches: list[torch.Tensor], lams: list[float]) -> None:
        self.model, self.cfg, self.bank, self.s, self.log = model, cfg, bank, settings, log
        self.val_batches, self.lams = val_batches, lams
        self.disc: torch.nn.Module | None = None  # one discriminator for every GAN stage, built when first needed
        self.delta_range = cfg.delta_range  # the recipe's Δ range within the model's (set per stage)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (target, x̂) of the last codec step, for D

    # -- one step of each kind ------------------------------------------------------------------
    def vae_step(self, stage: StageConfig, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage-0 loss (as ``Trainer.train_step``): MSE + MS-SSIM + colour + KL on a sampled posterior."""
        from gateway.training.losses import color_loss, kl_divergence, ms_ssim_loss, mse_per_image
        from gateway.training.trainer import psnr_8bit
        from gateway.training.vae_io import vae_decode, vae_encode

        w = stage.loss
        with self.s.autocast():
            latent, mean, logvar = vae_encode(self.model, x, sample=True)
            x_hat = vae_decode(self.model, latent)
        x_hat = x_hat.float()
        mse = mse_per_image(x, x_hat)
        loss = w.mse * mse
        if w.ms_ssim > 0:
            loss = loss + w.ms_ssim * ms_ssim_loss(x, x_hat)
        if w.kl > 0 and mean is not None:
            loss = loss + w.kl * kl_divergence(mean.float(), logvar.float())
        if w.color > 0:
            loss = loss + w.color * color_loss(x, x_hat)
        return loss.mean(), {"mse": mse.detach().mean(), "psnr": psnr_8bit(x, x_hat.detach()).mean()}

    def codec_step(self, stage: StageConfig, x: torch.Tensor, gan_on: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stages 1-2 loss (as ``Trainer.train_step``): λ·bpp + distortion, per-sample λ and Δ, truncation."""
        from gateway.training.losses import bits_per_pixel, codec_distortion
        from gateway.training.trainer import draw_knobs, psnr_8bit

        dev, b = x.device, x.shape[0]
        lam, delta = draw_knobs(b, tuple(self.model.lam_range), self.delta_range, self.cfg.lam_sampling)
        lam, delta = lam.to(dev, non_blocking=True), delta.to(dev, non_blocking=True)
        latent_target = None
        if stage.loss.latent > 0:
            with torch.no_grad():  # the frozen encoder's posterior mean, in float32 like the CPU trainer's cache
                latent_target = self.model.vae_encode(x).float()
        received = None
        if stage.truncate_prob > 0:
            cut = torch.rand(b) < stage.truncate_prob
            received = torch.where(cut, torch.randint(0, 4, (b,)), torch.full((b,), 4))
        with self.s.autocast():
            out = self.model(x, lam, delta, window=stage.pixel_window, received=received)
        bpp = bits_per_pixel(out["bits_y"], out["bits_z"], x.shape[-2], x.shape[-1]).float()
        weights = stage.loss if gan_on else dataclasses.replace(stage.loss, gan=0.0)
        if gan_on:
            self.disc.requires_grad_(False)
        x_hat = out["x_hat"].float()
        terms = codec_distortion(x, {**out, "x_hat": x_hat}, weights, latent_target,
                                 disc=self.disc if gan_on else None)
        loss = (lam * bpp + terms["D"]).mean()
        metrics = {k: v.detach().mean() for k, v in terms.items()}
        metrics.update(bpp=bpp.detach().mean(), psnr=psnr_8bit(out["x_target"], x_hat.detach()).mean())
        self._last = (out["x_target"], x_hat.detach())
        return loss, metrics

    # -- the stage ------------------------------------------------------------------------------
    def _fallback(self, exc: BaseException, state: dict[str, Any]) -> str | None:
        """A cheaper way to run the first steps after ``exc``, applied; None when there is none left."""
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            if state["batch"] > 2:
                state["batch"] //= 2
                return f"batch {state['batch']}"
            return None
        if self.s.channels_last:
            self.s.channels_last = False
            self.model.to(memory_format=torch.contiguous_format)
            return "no channels-last"
        if self.s.amp:
            self.s.amp = False
            return "float32 (no bf16 autocast)"
        return None

    def run(self, stage: StageConfig, seconds: float) -> dict[str, Any]:
        """Train ``stage`` for ``seconds`` (and at most ``settings.max_steps`` steps); returns its record."""
        from gateway.training.discriminator import PatchDiscriminator
        from gateway.training.losses import gan_discriminator_loss
        from gateway.training.trainer import lr_factor, stage_param_groups, trains

        model, s = self.model, self.s
        dev = s.device
        for name, p in model.named_parameters():
            p.requires_grad_(trains(name, stage))
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"stage {stage.name!r}: no parameter matches trainable={stage.trainable}")
        fused = {"fused": True} if dev.type == "cuda" else {}
        opt = torch.optim.AdamW(stage_param_groups(model, stage), lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                **fused)
        base_lrs = [g["lr"] for g in opt.param_groups]
        gan = stage.kind == "codec" and stage.loss.gan > 0
        disc_opt = None
        if gan:
            if self.disc is None:
                self.disc = PatchDiscriminator().to(dev)
            disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=stage.disc_lr, betas=(0.5, 0.99), **fused)
        disc_share = stage.disc_start / max(1, stage.steps) if gan else 1.0
        lo, hi = (float(v) for v in model.delta_range)
        self.delta_range = (max(self.cfg.delta_range[0], lo), min(self.cfg.delta_range[1], hi))
        state = {"batch": stage.batch or self.cfg.data.batch}
        crop = stage.crop or self.cfg.data.crop
        record: dict[str, Any] = {
            "name": stage.name, "kind": stage.kind, "seconds_planned": round(seconds, 1), "crop": crop,
            "trainable_parameters": int(sum(p.numel() for p in params)), "fallbacks": [], "val": [],
        }
        self.log.record["stages"].append(record)
        self.log.event(f"stage {stage.name} ({stage.kind}): {seconds:.0f} s planned, batch {state['batch']} x "
                       f"{crop}², {record['trainable_parameters'] / 1e6:.2f} M trainable parameters, lr {stage.lr:g}")
        model.train()
        t0 = time.time()
        end = t0 + seconds
        step = bad = 0
        sums: dict[str, torch.Tensor] = {}
        window_steps, t_window, t_last_val = 0, time.time(), time.time()
        t_measure = None
        last_metrics: dict[str, float] = {}
        while True:
            now = time.time()
            if now >= end or (s.max_steps is not None and step >= s.max_steps):
                break
            share = min(1.0, (now - t0) / max(seconds, 1e-9))
            # Warmup in steps, then a cosine over the stage's time: the anneal ends when the time does.
            virtual = step if step < stage.warmup else stage.warmup + share * (stage.steps - stage.warmup)
            factor = lr_factor(int(virtual), stage)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * factor
            gan_on = gan and share >= disc_share
            try:
                x = s.prepare(self.bank.crops(state["batch"], crop))
                if stage.kind == "vae":
                    loss, metrics = self.vae_step(stage, x)
                else:
                    loss, metrics = self.codec_step(stage, x, gan_on)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip if stage.grad_clip > 0 else math.inf)
                finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))  # the one host sync
            except Exception as exc:  # noqa: BLE001 - the first steps may fall back; later errors end the stage
                opt.zero_grad(set_to_none=True)
                if step >= FALLBACK_STEPS:
                    raise
                change = self._fallback(exc, state)
                if change is None:
                    raise
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                record["fallbacks"].append(f"step {step}: {type(exc).__name__}: {str(exc)[:200]} -> {change}")
                self.log.event(f"stage {stage.name}: {type(exc).__name__} at step {step}; falling back to {change}")
                continue
            if not finite:
                # One bad batch should not end the run; a persistent problem still does.
                bad += 1
                opt.zero_grad(set_to_none=True)
                if bad >= 20:
                    raise FloatingPointError(f"loss non-finite for {bad} steps in a row in stage {stage.name}")
                continue
            bad = 0
            opt.step()
            if gan_on:
                target, fake = self._last
                self.disc.requires_grad_(True)
                d_loss = gan_discriminator_loss(self.disc(target), self.disc(fake.clamp(0, 1)))
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                disc_opt.step()
                metrics["d_loss"] = d_loss.detach()
            metrics["loss"] = loss.detach()
            metrics["grad_norm"] = grad_norm.detach()
            for k, v in metrics.items():
                sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
            step += 1
            window_steps += 1
            record["steps"] = step  # kept current: an interrupted stage still reports how far it got
            if step == WARM_STEPS:
                s.sync()
                t_measure = time.time()
            elif t_measure is not None and step == WARM_STEPS + MEASURE_STEPS:
                s.sync()
                record["s_per_step_measured"] = round((time.time() - t_measure) / MEASURE_STEPS, 4)
                record["steps_projected"] = step + int((end - time.time()) / record["s_per_step_measured"])
                self.log.event(f"stage {stage.name}: {record['s_per_step_measured'] * 1e3:.1f} ms/step at batch "
                               f"{state['batch']}: about {record['steps_projected']} steps fit its {seconds:.0f} s")
            now = time.time()
            if now - t_window >= s.log_every_s or s.dry:
                last_metrics = {k: round(float(v) / window_steps, 5) for k, v in sums.items()}
                rate = window_steps / max(now - t_window, 1e-9)
                self.log.event(f"{stage.name} step {step} {rate:.2f} steps/s lr {stage.lr * factor:.3g} "
                               + " ".join(f"{k} {v:.4g}" for k, v in last_metrics.items()))
                sums, window_steps, t_window = {}, 0, now
            if self.val_batches and now - t_last_val >= s.val_every_s and end - now > s.val_every_s / 3:
                self._validate(stage, step, record)
                t_last_val = time.time()
        s.sync()
        if window_steps:
            last_metrics = {k: round(float(v) / window_steps, 5) for k, v in sums.items()}
        elapsed = time.time() - t0
        record.update(steps=step, seconds=round(elapsed, 1), batch=state["batch"], train=last_metrics,
                      s_per_step=round(elapsed / max(step, 1), 4), amp=s.amp, channels_last=s.channels_last)
        if dev.type == "cuda":
            record["peak_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        if self.val_batches:
            self._validate(stage, step, record)
        for p in model.parameters():
            p.requires_grad_(False)
        return record

    def _validate(self, stage: StageConfig, step: int, record: dict[str, Any]) -> None:
        t = time.time()
        res = validate(self.model, self.val_batches, stage.kind, self.lams)
        record["val"].append({"step": step, **res})
        self.log.event(f"val {stage.name} step {step} ({time.time() - t:.1f} s): "
                       + " ".join(f"{k} {v:.4g}" for k, v in res.items()))
        self.log.save()


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")),
                   help="where the pieces, config.yaml and run.json go (default $OUT)")
    p.add_argument("--budget-s", type=float, default=510.0, help="wall-clock budget of the whole run, seconds")
    p.add_argument("--deadline", type=float, help="the budget's end as a Unix time (the shell wrapper passes it, "
                   "so the wheel install counts)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model config (fresh runs)")
    p.add_argument("--recipe", type=Path, help="training recipe (default: cadc-tiny-gpu.yaml, or "
                   "cadc-tiny-gpu-continue.yaml with --init-bundle)")
    p.add_argument("--init-bundle", type=Path, help="continue this bundle (its own config and weights; no VAE stage)")
    p.add_argument("--warm-start", type=Path, default=BASELINE_BUNDLE,
                   help="fresh runs: copy the codec's and UNet's tensors from this bundle where names and shapes "
                   "agree ('none': all random)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--payload", type=Path, default=PAYLOAD, help="packed data (tools/pack_gpu_payload.py)")
    p.add_argument("--baseline", type=Path, default=BASELINE_BUNDLE,
                   help="bundle validated on the same crops for comparison ('none' to skip)")
    p.add_argument("--device", default="cuda", help="cuda (default: fail at once without a GPU), cuda:N, auto or cpu; "
                   "dry runs use the CPU")
    p.add_argument("--batch-scale", type=float, default=1.0, help="multiply every stage's batch (GPU runs)")
    p.add_argument("--val-every-s", type=float, default=45.0, help="validation interval within a stage")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast: auto = the recipe's amp on a GPU, off on the CPU (bf16 here checks the "
                   "mixed-precision path in a dry run, slowly)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC tensors: auto = on a GPU only")
    p.add_argument("--limit-images", type=int, help="use only the first N training images (dry runs: 6)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, two steps per stage, unpack round trip")
    return p.parse_args(argv)


def recipe_for(args: argparse.Namespace) -> TrainConfig:
    """The recipe, cut down for a dry run (tiny crops and batches, no GAN delay, 2 validation images)."""
    path = args.recipe or (CONTINUE_RECIPE if args.init_bundle else DEFAULT_RECIPE)
    cfg = TrainConfig.from_yaml(path)
    if args.dry_run:
        # The codec needs 128² (z is at 1/128 of the side); the VAE stage gets by with 64².
        cfg.data.batch, cfg.data.crop, cfg.data.val_limit, cfg.data.val_size = 2, 128, 2, 128
        cfg.val_lams = 2
        for stage in cfg.stages:
            stage.batch, stage.crop = (1, 128) if stage.kind == "codec" else (2, 64)
            stage.pixel_window, stage.disc_start, stage.warmup = None, 0, 1
    elif args.batch_scale != 1.0:
        cfg.data.batch = max(1, round(cfg.data.batch * args.batch_scale))
        for stage in cfg.stages:
            if stage.batch:
                stage.batch = max(1, round(stage.batch * args.batch_scale))
    return cfg


def environment(device: torch.device) -> dict[str, Any]:
    """What ran this: versions and the accelerator."""
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                           "cpu_count": os.cpu_count()}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError as exc:
        env["diffusers"] = f"missing: {exc}"
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   gpu_memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    return env


def dry_round_trip(out: Path, log: RunLog) -> dict[str, Any]:
    """Unpack the pieces into a bundle and code + decode a picture with it (what a later session does)."""
    from gateway.codec.base import Knobs
    from gateway.codec.cadc.codec import CADCCodec

    spec = importlib.util.spec_from_file_location("satgw_unpack_gpu_bundle", ROOT / "tools" / "unpack_gpu_bundle.py")
    unpack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unpack)
    bundle = out / "bundle"
    rc = unpack.main([str(out), str(bundle), "--force", "--quiet"])
    if rc != 0:
        raise RuntimeError(f"unpack_gpu_bundle exited {rc}")
    codec = CADCCodec.from_bundle(bundle)
    img = generated_images(1, 160, 224, seed=5)[0].permute(1, 2, 0).numpy()
    data = codec.encode(codec.analyze(img), Knobs(128, 128), (img.shape[1], img.shape[0]))
    picture = codec.decode(data)
    if picture.shape != img.shape or picture.dtype != np.uint8:
        raise RuntimeError(f"decoded {picture.shape} {picture.dtype}, expected {img.shape} uint8")
    result = {"bundle": str(bundle), "model_id": f"{codec.model_id:04x}", "bytes": len(data),
              "decoded": list(picture.shape)}
    log.event(f"dry run: unpacked into {bundle}, coded a {img.shape[1]}x{img.shape[0]} picture in {len(data)} bytes "
              f"and decoded it")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    deadline = args.deadline if args.deadline else start + args.budget_s
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, start)

    def stop(signum: int, frame: Any) -> None:  # SIGTERM from the wrapper's timeout: export, as on SIGINT
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    from gateway.codec.cadc.devices import resolve_device

    device = torch.device("cpu") if args.dry_run else resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = recipe_for(args)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    amp = {"auto": cuda and cfg.amp == "bf16", "bf16": True, "off": False}[args.amp]
    channels_last = {"auto": cuda, "on": True, "off": False}[args.channels_last]
    settings = Settings(device=device, amp=amp, channels_last=channels_last,
                        dry=args.dry_run, max_steps=2 if args.dry_run else None,
                        val_every_s=1e9 if args.dry_run else args.val_every_s, log_every_s=15.0,
                        shard_bytes=8 * MIB if args.dry_run else SHARD_BYTES)
    log.record.update(mode="dry-run" if args.dry_run else "gpu", plan="init-bundle" if args.init_bundle else "fresh",
                      model_config=str(args.init_bundle / "config.yaml" if args.init_bundle else args.model),
                      recipe=str(args.recipe or (CONTINUE_RECIPE if args.init_bundle else DEFAULT_RECIPE)),
                      budget_s=round(deadline - start, 1), env=environment(device))
    log.event(f"device {device} ({log.record['env'].get('gpu', 'cpu')}), torch {torch.__version__}, "
              f"budget {deadline - start:.0f} s, plan {log.record['plan']}")
    model = None
    code = 0
    try:
        # data
        t = time.time()
        train_dir, val_dir = args.payload / "data" / "train", args.payload / "data" / "val"
        if train_dir.is_dir():
            train_images = load_folder(train_dir, args.limit_images or (6 if args.dry_run else None))
            val_images = load_folder(val_dir) if val_dir.is_dir() else []
        elif args.dry_run:
            train_images = generated_images(4, 192, 256, seed=1)
            val_images = generated_images(2, 160, 160, seed=2)
        else:
            raise FileNotFoundError(f"no training data in {train_dir}: run python tools/pack_gpu_payload.py here and "
                                    f"carry .gpu (docs/gpu_run.md)")
        from gateway.training.device_bank import DeviceImageBank

        bank = DeviceImageBank(train_images, device, cfg.max_crop, seed=cfg.seed)
        log.record["data"] = {"train_images": len(train_images), "val_images": min(len(val_images), cfg.data.val_limit),
                              "val_size": cfg.data.val_size,
                              "bank_mib": round(bank.nbytes / MIB, 1), "load_s": round(time.time() - t, 1),
                              "source": str(train_dir) if train_dir.is_dir() else "generated"}
        log.event(f"data: {len(train_images)} training images on {device} ({bank.nbytes / MIB:.0f} MiB), "
                  f"{log.record['data']['val_images']} validation crops, {time.time() - t:.1f} s")
        del train_images

        # model and baseline
        loaded: dict[str, Any] = {}
        model = build(args, log, loaded).to(device)
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
        multiple = int(model.config.codec.pad_multiple)
        val_batches = validation_batches(val_images, cfg.data.val_size, multiple, device, cfg.data.val_limit)
        lams = validation_lams(model, cfg.val_lams)
        if str(args.baseline) != "none" and Path(args.baseline).is_dir() and val_batches:
            base = load_bundle(args.baseline, loaded).to(device)
            log.record["baseline"] = {"bundle": str(args.baseline), **validate(base, val_batches, "vae", lams),
                                      **validate(base, val_batches, "codec", validation_lams(base, cfg.val_lams))}
            log.event("baseline " + " ".join(f"{k} {v:.4g}" for k, v in log.record["baseline"].items()
                                               if isinstance(v, float)))
            del base
        loaded.clear()
        log.save()

        # stages
        runner = StageRunner(model, cfg, bank, settings, log, val_batches, lams)
        stages = list(cfg.stages)
        for i, stage in enumerate(stages):
            remaining = deadline - time.time() - RESERVE_S
            if remaining <= 5 and not args.dry_run:
                log.event(f"no time left for stage {stage.name}; stopping")
                break
            share = stage.steps / sum(s.steps for s in stages[i:])
            runner.run(stage, max(remaining * share, 1.0))
            if stage.kind == "vae":
                # Dry runs: one small batch; GPU runs: 16 batches of 32 256² crops (~500 crops, as vae_scale.py's 200
                # centre crops but drawn like the training batches).
                std = latent_std(model, lambda: bank.crops(2, 64) if args.dry_run else bank.crops(32, 256),
                                 1 if args.dry_run else 16)
                factor = round(1.0 / std, 4)
                set_scaling_factor(model, factor)
                log.record["scaling_factor"] = factor
                log.event(f"VAE latent std {std:.4f}: vae.scaling_factor set to {factor}")
            export(model, out, log, settings.shard_bytes)
            log.event(f"exported after stage {stage.name}: {len(log.record['weights']['pieces'])} pieces "
                      f"({log.record['weights']['dtype']})")
        log.record["status"] = "complete"
    except KeyboardInterrupt as exc:
        log.record["status"] = "interrupted"
        log.event(f"interrupted ({exc}); exporting the current weights")
        code = 130
    except Exception as exc:  # noqa: BLE001 - one record whatever happens, and the weights there are
        log.record["status"] = "failed"
        log.record["error"] = f"{type(exc).__name__}: {exc}"
        log.record["traceback"] = traceback.format_exc()
        traceback.print_exc()
        code = 1
    if model is not None and log.record["status"] != "complete":
        try:
            export(model, out, log, settings.shard_bytes)
        except Exception as exc:  # noqa: BLE001
            log.event(f"export failed: {type(exc).__name__}: {exc}")
    log.save()
    if args.dry_run and log.record["status"] == "complete":
        try:
            log.record["round_trip"] = dry_round_trip(out, log)
        except Exception as exc:  # noqa: BLE001
            log.record["status"] = "failed"
            log.record["error"] = f"round trip: {type(exc).__name__}: {exc}"
            traceback.print_exc()
            code = 1
    log.save()
    summary = {k: log.record.get(k) for k in ("status", "mode", "plan", "elapsed_s", "scaling_factor", "error")}
    summary["stages"] = [{k: st.get(k) for k in ("name", "steps", "s_per_step", "batch", "seconds")}
                         for st in log.record["stages"]]
    summary["val"] = log.record["stages"][-1]["val"][-1] if log.record["stages"] and log.record["stages"][-1]["val"] else None
    summary["baseline"] = log.record.get("baseline")
    print("GPU_TRAIN_JSON " + json.dumps(summary, default=str), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
