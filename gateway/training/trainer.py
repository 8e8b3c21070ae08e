"""The CADC training loop: stage 0 (VAE), stages 1-2 (codec), checkpoints, validation, export.

One :class:`Trainer` drives a model through the stages of a
:class:`TrainConfig`.  The loop is deliberately plain (no framework): one
optimizer per stage (plus one for the discriminator when the stage has a GAN
term), warmup + cosine LR, gradient clipping, per-sample λ and Δ so one model
learns every rate, and everything needed to resume bit-for-bit in the
checkpoint.  Under ``torchrun`` the trainable forward is wrapped in
DistributedDataParallel; rank 0 alone validates, checkpoints and exports.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gateway.errors import ConfigError
from gateway.training.checkpoint import latest_checkpoint, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from gateway.training.config import StageConfig, TrainConfig
from gateway.training.data import CropSampler, ImageBank, center_crops
from gateway.training.discriminator import PatchDiscriminator
from gateway.training.losses import (
    bits_per_pixel,
    codec_distortion,
    color_loss,
    gan_discriminator_loss,
    kl_divergence,
    load_perceptual,
    ms_ssim_loss,
    mse_per_image,
    require_perceptual_weights,
)
from gateway.training.latents import LATENT_STRIDE, LatentCache
from gateway.training.vae_io import vae_decode, vae_encode

ExportFn = Callable[[nn.Module, Path], None]


def trains(name: str, stage: StageConfig) -> bool:
    """Whether parameter ``name`` trains in ``stage`` (prefix match on trainable minus frozen)."""
    if stage.trainable and not any(name.startswith(p) for p in stage.trainable):
        return False
    if stage.kind == "vae" and not stage.trainable and not name.startswith("vae."):
        return False
    return not any(name.startswith(p) for p in stage.frozen)


def check_lr_scale(model: nn.Module, stage: StageConfig) -> None:
    """Refuse ``stage.lr_scale`` prefixes that name no parameter of ``model`` at all.

    A misspelt prefix, or one for blocks the model config does not build, would otherwise leave the weights it
    meant to speed up training at 1x without a word.
    """
    names = [name for name, _ in model.named_parameters()]
    unmatched = [prefix for prefix in stage.lr_scale if not any(n.startswith(prefix) for n in names)]
    if unmatched:
        raise ConfigError(f"stage {stage.name!r}: lr_scale prefixes {unmatched} name no parameter of the model; "
                          "correct the prefix, or build the model the recipe expects (see the recipe's header)")


def stage_param_groups(model: nn.Module, stage: StageConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups of ``stage``: the parameters that train, one group per lr multiplier.

    ``stage.lr_scale`` maps name prefixes to multipliers (first match wins);
    each group's ``lr`` is ``stage.lr`` times its multiplier, so a LambdaLR
    schedule scales every group alike and the multipliers survive warmup and decay.
    Call after setting ``requires_grad`` with :func:`trains`.
    """
    check_lr_scale(model, stage)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((f for prefix, f in stage.lr_scale.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": stage.lr * f} for f, ps in groups.items()]


def lr_factor(i: int, stage: StageConfig) -> float:
    """Learning-rate multiplier at step ``i`` of ``stage``: linear warmup, then cosine to ``min_lr_ratio``
    at ``stage.steps``."""
    if i < stage.warmup:
        return (i + 1) / max(1, stage.warmup)
    t = min(1.0, (i - stage.warmup) / max(1, stage.steps - stage.warmup))
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def draw_knobs(n: int, lam_range: tuple[float, float], delta_range: tuple[float, float],
               lam_sampling: str = "log_uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample λ over ``lam_range`` and Δ over ``delta_range`` (CPU tensors, torch's global generator).

    Half the samples get Δ = 1, which keeps the primary operating point well
    trained; the rest spread Δ log-uniformly.
    """
    lo, hi = lam_range
    u = torch.rand(n)
    if lam_sampling == "log_uniform":
        lam = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        lam = lo + u * (hi - lo)
    dlo, dhi = delta_range
    v = torch.rand(n)
    delta = torch.exp(math.log(dlo) + v * (math.log(dhi) - math.log(dlo)))
    delta = torch.where(torch.rand(n) < 0.5, torch.ones(n), delta)
    return lam, delta


class _StageForward(nn.Module):
    """The differentiable part of one training step, as one module so DDP can wrap it."""

    def __init__(self, model: nn.Module, kind: str, rounded_rate: bool = False) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.rounded_rate = rounded_rate

    def forward(self, x: torch.Tensor, lam: torch.Tensor | None = None, delta: torch.Tensor | None = None,
                window: int | None = None, received: torch.Tensor | None = None) -> dict[str, Any]:
        if self.kind == "vae":
            latent, mean, logvar = vae_encode(self.model, x, sample=True)
            return {"x_hat": vae_decode(self.model, latent), "mean": mean, "logvar": logvar}
        return self.model(x, lam, delta, window=window, received=received, rounded_rate=self.rounded_rate)


def psnr_8bit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR per image on 8-bit-quantised values, as a decoder would deliver them."""
    xq = (x.clamp(0, 1) * 255).round()
    yq = (y.clamp(0, 1) * 255).round()
    mse = (xq - yq).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


class Trainer:
    """Runs a :class:`TrainConfig` on a CADC model; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path,
        train_bank: ImageBank,
        val_bank: ImageBank | None = None,
        export_dir: str | Path | None = None,
        export_fn: ExportFn | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
        latents_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.out_dir = Path(out_dir)
        # The cache's sub-folder is named by a hash of the VAE encoder and the images, so runs may share a folder.
        self.latents_dir = Path(latents_dir) if latents_dir else self.out_dir
        self.export_dir = Path(export_dir) if export_dir else None
        self.export_fn = export_fn
        self.progress = progress
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        require_perceptual_weights(cfg.stages, cfg.lpips_path, cfg.clip_path)  # a missing file stops the run now

        self.sampler = CropSampler(train_bank, cfg.data.crop, cfg.data.batch, seed=cfg.seed, rank=self.rank,
                                   vflip=cfg.data.vflip, max_size=cfg.max_crop)
        self.val_inputs = center_crops(val_bank, cfg.data.val_size, self._pad_multiple()) if val_bank else []

        lam_range = tuple(float(v) for v in getattr(model, "lam_range", (1.0, 1.0)))
        self.lam_range: tuple[float, float] = (lam_range[0], lam_range[1])
        self.lam_train_range = self.lam_range
        if cfg.lam_train_range is not None:
            lo, hi = cfg.lam_train_range
            if lo < self.lam_range[0] or hi > self.lam_range[1]:
                raise ConfigError(f"lam_train_range {list(cfg.lam_train_range)} must lie inside the model's "
                                  f"lam_range {list(self.lam_range)}")
            self.lam_train_range = (lo, hi)
        for stage in cfg.stages:  # before any stage runs: a later stage's typo would otherwise cost the earlier ones
            check_lr_scale(self.model, stage)
        self.delta_range = cfg.delta_range
        model_delta = getattr(model, "delta_range", None)
        if model_delta is not None:
            lo, hi = (float(v) for v in model_delta)
            self.delta_range = (max(cfg.delta_range[0], lo), min(cfg.delta_range[1], hi))
            if self.delta_range[0] > lo or self.delta_range[1] < hi:
                # The rate controller picks any Δ of the model's range; Δ never trained on decodes poorly.
                self._log_line(f"notice: Δ is trained over [{self.delta_range[0]:g}, {self.delta_range[1]:g}] but the "
                               f"model's rate controller may pick any Δ in [{lo:g}, {hi:g}]; set the recipe's "
                               f"delta_range to [{lo:g}, {hi:g}] to train them all")

        self.step = 0
        self.stage_index = -1
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.forward: nn.Module | None = None
        self.disc: PatchDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        self.disc_forward: nn.Module | None = None
        if any(s.loss.gan > 0 for s in cfg.stages):
            self.disc = PatchDiscriminator().to(self.device)
        self.perceptual: dict[str, nn.Module] = {}
        self.latent_cache: LatentCache | None = None
        self._last_export = time.monotonic()
        self._metrics_file = self.out_dir / "metrics.jsonl"
        self._tb = None
        self._bad_steps = 0
        self._val_loss: tuple[int, float] | None = None  # (step, loss) of the latest validation

    # ------------------------------------------------------------------ setup
    def _pad_multiple(self) -> int:
        cfg = getattr(self.model, "config", None)
        codec = getattr(cfg, "codec", None)
        return int(getattr(codec, "pad_multiple", 64)) if codec is not None else 64

    @property
    def stage(self) -> StageConfig:
        return self.cfg.stages[self.stage_index]

    def _enter_stage(self, index: int) -> None:
        """Freeze/unfreeze parameters and build the stage's optimizer, scheduler and DDP wrapper."""
        self.stage_index = index
        stage = self.cfg.stages[index]
        names = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(trains(name, stage))
            if p.requires_grad:
                names.append(name)
        # With the VAE encoder frozen, each image's latent target is computed once (crops on the latent grid).
        encoder_frozen = not any(n.startswith(("vae.encoder.", "vae.quant_conv.")) for n in names)
        cached = stage.kind == "codec" and stage.loss.needs_latent_target and encoder_frozen and not self.cfg.data.vflip
        self.sampler.configure(stage.crop or self.cfg.data.crop, stage.batch or self.cfg.data.batch,
                               align=LATENT_STRIDE if cached else 1)
        self.latent_cache = None
        if cached:
            # Every rank encodes its share of the images into the shared folder and reads them all.
            self.latent_cache = LatentCache.build(self.model, self.sampler.images, self.latents_dir, log=self._log_line,
                                                  rank=self.rank, world=self.world)
        if not names:
            raise ConfigError(f"stage {stage.name!r}: no parameter matches trainable={stage.trainable}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(stage_param_groups(self.model, stage), lr=stage.lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i, s=stage: lr_factor(i, s))
        fwd = _StageForward(self.model, stage.kind, rounded_rate=stage.rate_estimate == "rounded")
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = DistributedDataParallel(fwd, device_ids=ids, find_unused_parameters=True)
        self.forward = fwd
        if stage.loss.gan > 0 and self.disc is not None:
            self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=stage.disc_lr, betas=(0.5, 0.99))
            self.disc_forward = (
                DistributedDataParallel(self.disc, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                if self.distributed else self.disc
            )
        else:
            self.disc_optimizer, self.disc_forward = None, None
        self.perceptual = {k: m.to(self.device) for k, m in
                           load_perceptual(stage.loss, self.cfg.lpips_path, self.cfg.clip_path).items()}
        n_train = sum(p.numel() for p in params)
        self._log_line(f"stage {index} {stage.name!r} ({stage.kind}): {stage.steps} steps, "
                       f"{n_train / 1e6:.3f} M trainable parameters in {len(names)} tensors, lr {stage.lr:g}")

    # ------------------------------------------------------------------ logging
    def _log_line(self, text: str) -> None:
        if self.is_main:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _log_metrics(self, record: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self._metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def _open_tensorboard(self) -> None:
        if not self.is_main or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional; JSONL is always written
            return
        self._tb = SummaryWriter(str(self.out_dir / "tb"))

    # ------------------------------------------------------------------ sampling
    def sample_knobs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample λ (over the model's range, or the recipe's ``lam_train_range`` of it) and Δ (over the
        recipe's range around 1)."""
        lam, delta = draw_knobs(n, self.lam_train_range, self.delta_range, self.cfg.lam_sampling)
        return lam.to(self.device), delta.to(self.device)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimisation step of the current stage; returns scalar metrics."""
        stage = self.stage
        x, where = self.sampler.next_batch_with_positions()
        x = x.to(self.device)
        assert self.forward is not None and self.optimizer is not None and self.scheduler is not None
        self.model.train()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")
        metrics: dict[str, float] = {}
        # Only the networks run under autocast: the loss terms (MS-SSIM powers, likelihoods) need float32.
        if stage.kind == "vae":
            with autocast:
                out = self.forward(x)
            x_hat = out["x_hat"].float()
            mse = mse_per_image(x, x_hat)
            loss_vec = stage.loss.mse * mse
            if stage.loss.ms_ssim > 0:
                loss_vec = loss_vec + stage.loss.ms_ssim * ms_ssim_loss(x, x_hat)
            if stage.loss.kl > 0 and out["mean"] is not None:
                loss_vec = loss_vec + stage.loss.kl * kl_divergence(out["mean"], out["logvar"])
            if stage.loss.color > 0:
                loss_vec = loss_vec + stage.loss.color * color_loss(x, x_hat)
            loss = loss_vec.mean()
            target = x
        else:
            lam, delta = self.sample_knobs(x.shape[0])
            latent_target = None
            if self.latent_cache is not None:
                latent_target = self.latent_cache.batch(where, x.shape[-1]).to(self.device)
            elif stage.loss.needs_latent_target:
                with torch.no_grad():
                    latent_target, _, _ = vae_encode(self.model, x)
            received = None
            if stage.truncate_prob > 0:
                cut = torch.rand(x.shape[0]) < stage.truncate_prob
                received = torch.where(cut, torch.randint(0, 4, (x.shape[0],)), torch.full((x.shape[0],), 4))
            with autocast:
                out = self.forward(x, lam, delta, window=stage.pixel_window, received=received)
            target = out["x_target"]
            bpp = bits_per_pixel(out["bits_y"], out["bits_z"], x.shape[-2], x.shape[-1]).float()
            gan_on = stage.loss.gan > 0 and self.step_in_stage >= stage.disc_start and self.disc is not None
            weights = stage.loss
            if not gan_on and weights.gan > 0:
                weights = type(weights)(**{**weights.__dict__, "gan": 0.0})
            if gan_on:
                self.disc.requires_grad_(False)
            terms = codec_distortion(x, {**out, "x_hat": out["x_hat"].float()}, weights, latent_target,
                                     disc=self.disc if gan_on else None, perceptual=self.perceptual)
            loss = (lam * bpp + terms["D"]).mean()
            aux_fn = getattr(self.model, "aux_loss", None)
            if callable(aux_fn):
                loss = loss + aux_fn()
            x_hat = out["x_hat"].float()
            metrics["bpp"] = float(bpp.detach().mean())
            metrics["lam"] = float(lam.mean())
            for k, v in terms.items():
                metrics[k] = float(v.detach().mean())
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.distributed:  # every rank must skip together, or the next all-reduce deadlocks
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            # One bad batch should not end an unattended multi-hour run; a persistent problem still does.
            self._bad_steps += 1
            self._log_line(f"non-finite loss at step {self.step}; step skipped ({self._bad_steps} in a row)")
            if self._bad_steps >= 20:
                raise FloatingPointError(f"loss non-finite for {self._bad_steps} steps in a row at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            return {"loss": float("nan"), "psnr": float("nan"), "skipped": 1.0}
        self._bad_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], stage.grad_clip if stage.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        metrics.update(loss=float(loss.detach()), grad_norm=float(grad_norm), lr=self.scheduler.get_last_lr()[0],
                       psnr=float(psnr_8bit(target, x_hat.detach()).mean()))

        if stage.kind == "codec" and self.disc_optimizer is not None and self.step_in_stage >= stage.disc_start:
            self.disc.requires_grad_(True)
            d_loss = gan_discriminator_loss(self.disc_forward(target), self.disc_forward(x_hat.detach().clamp(0, 1)))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            metrics["d_loss"] = float(d_loss.detach())
        return metrics

    @property
    def step_in_stage(self) -> int:
        return self.cfg.stage_at(self.step)[1]

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """PSNR / MS-SSIM (and estimated bpp at a few λ for codec stages) on the held-out crops.

        ``loss`` is the stage's objective without its GAN and perceptual
        terms (λ·bpp + weighted MSE and 1 − MS-SSIM, averaged over the λs):
        the score that picks the best checkpoint of the stage.
        """
        if not self.val_inputs:
            return {}
        self.model.eval()
        stage = self.stage
        w = stage.loss
        record: dict[str, Any] = {"kind": "val", "step": self.step, "stage": stage.name}
        if stage.kind == "vae":
            ps, ms, mse = [], [], []
            for x in self.val_inputs:
                x = x.to(self.device)
                latent, _, _ = vae_encode(self.model, x)
                x_hat = vae_decode(self.model, latent).clamp(0, 1)
                ps.append(float(psnr_8bit(x, x_hat)[0]))
                ms.append(float(1 - ms_ssim_loss(x, x_hat)[0]))
                mse.append(float(mse_per_image(x, x_hat)[0]))
            record.update(psnr=float(np.mean(ps)), ms_ssim=float(np.mean(ms)),
                          loss=w.mse * float(np.mean(mse)) + w.ms_ssim * (1 - float(np.mean(ms))))
        else:
            losses = []
            lo, hi = self.lam_range
            lams = np.exp(np.linspace(math.log(hi), math.log(lo), self.cfg.val_lams)) if self.cfg.val_lams > 1 else [math.sqrt(lo * hi)]
            for lam in lams:
                ps, ms, bp, mse = [], [], [], []
                for x in self.val_inputs:
                    x = x.to(self.device)
                    out = self.model(x, torch.full((1,), float(lam), device=self.device), torch.ones(1, device=self.device))
                    x_hat = out["x_hat"].float().clamp(0, 1)
                    bp.append(float(bits_per_pixel(out["bits_y"], out["bits_z"], x.shape[-2], x.shape[-1])[0]))
                    ps.append(float(psnr_8bit(x, x_hat)[0]))
                    ms.append(float(1 - ms_ssim_loss(x, x_hat)[0]))
                    mse.append(float(mse_per_image(x, x_hat)[0]))
                key = f"lam{lam:.3g}"
                record[f"{key}/bpp"] = float(np.mean(bp))
                record[f"{key}/psnr"] = float(np.mean(ps))
                record[f"{key}/ms_ssim"] = float(np.mean(ms))
                losses.append(lam * float(np.mean(bp)) + w.mse * float(np.mean(mse)) + w.ms_ssim * (1 - float(np.mean(ms))))
            record["loss"] = float(np.mean(losses))
        self.model.train()
        self._val_loss = (self.step, float(record["loss"]))
        return record

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, except the RNG states (added by save_checkpoint)."""
        return {
            "model": self.model.state_dict(),
            "stage_index": self.stage_index,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else None,
            "sampler": self.sampler.state_dict(),
            "train_config": self.cfg.__class__.__name__,
            "world_size": self.world,
            "time": time.time(),
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step; returns its path on rank 0.

        Under DDP every rank must call this: each rank's sampler and RNG
        states are gathered so a resume replays every rank's own stream.
        """
        state = self.state_dict()
        mine = {"sampler": self.sampler.state_dict(), "rng": rng_state()}
        if self.distributed:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        state["per_rank"] = gathered
        if not self.is_main:
            return None
        # A validation at this very step scores the checkpoint (the loop validates before it saves).
        score = self._val_loss[1] if self._val_loss and self._val_loss[0] == self.step else None
        return save_checkpoint(self.out_dir, self.step, state, keep=self.cfg.keep_checkpoints, score=score,
                               keep_best=self.cfg.keep_best)

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``path`` (default: the newest checkpoint in ``out_dir``); False when there is none."""
        path = Path(path) if path else latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
        self._enter_stage(int(state["stage_index"]))
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
        if self.disc_optimizer is not None and state.get("disc_optimizer") is not None:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        per_rank = state.get("per_rank") or [{"sampler": state["sampler"], "rng": state["rng"]}]
        if len(per_rank) == self.world:
            self.sampler.load_state_dict(per_rank[self.rank]["sampler"])
            restore_rng_state(per_rank[self.rank]["rng"])
        else:
            # Each rank owns its own crop stream; another world size cannot replay the same order.
            self.sampler.generator.manual_seed(self.cfg.seed * 1000 + self.rank + 7919 * self.step)
            torch.manual_seed(self.cfg.seed + self.rank + 7919 * self.step)
        self._log_line(f"resumed from {path} at step {self.step} (stage {self.stage.name!r})")
        return True

    def export(self) -> Path | None:
        """Write the current weights as a complete bundle to ``export_dir``, atomically (rank 0 only).

        The bundle is written beside the target and swapped in, so a reader
        never sees half a bundle; files in the old folder that the export does
        not write (the model card) are carried over.
        """
        if not self.is_main or self.export_dir is None or self.export_fn is None:
            return None
        target = self.export_dir
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-export-", dir=target.parent))
        self._last_export = time.monotonic()
        try:
            self.model.eval()
            try:
                self.export_fn(self.model, tmp)
            except Exception as exc:  # a failed export must not end hours of training; the checkpoint has it all
                shutil.rmtree(tmp, ignore_errors=True)
                self._log_line(f"export to {target} failed at step {self.step}: {type(exc).__name__}: {exc}")
                return None
            finally:
                self.model.train()
            # mkdtemp makes a private folder; a shipped bundle must be readable by every user.
            os.chmod(tmp, 0o755)
            for item in tmp.rglob("*"):
                os.chmod(item, 0o755 if item.is_dir() else 0o644)
            if target.is_dir():
                for item in target.iterdir():
                    if not (tmp / item.name).exists() and item.is_file():
                        shutil.copy2(item, tmp / item.name)
            (tmp / "TRAINING_STATE.json").write_text(json.dumps(
                {"step": self.step, "stage": self.stage.name, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
            old = target.with_name(f".{target.name}-old")
            if old.exists():
                shutil.rmtree(old)
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._log_line(f"exported bundle to {target} at step {self.step}")
        return target

    # ------------------------------------------------------------------ the loop
    def run(self, max_steps: int | None = None, persist: bool = True) -> dict[str, float]:
        """Train until the recipe ends (or ``max_steps`` more steps); returns the last step's metrics.

        ``persist=False`` writes no checkpoint and no export (timing runs: a
        full-size checkpoint is several GB).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._open_tensorboard()
        total = self.cfg.total_steps
        end = total if max_steps is None else min(total, self.step + max_steps)
        if self.stage_index < 0:
            self._enter_stage(self.cfg.stage_at(self.step)[0])
        bar = None
        if self.progress and self.is_main:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0 if sys.stderr.isatty() else 60.0)
        last: dict[str, float] = {}
        window: list[dict[str, float]] = []
        t0 = time.monotonic()
        while self.step < end:
            index, _ = self.cfg.stage_at(self.step)
            if index != self.stage_index:
                if persist:
                    self.save()
                    self.export()
                self._enter_stage(index)
            last = self.train_step()
            self.step += 1
            window.append(last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(stage=self.stage.name, loss=f"{last['loss']:.4f}", bpp=f"{last.get('bpp', 0):.4f}",
                                psnr=f"{last['psnr']:.2f}", refresh=False)
            if self.step % self.cfg.log_every == 0 or self.step == end:
                good = [w for w in window if not w.get("skipped")] or window
                avg = {k: float(np.mean([w[k] for w in good if k in w])) for k in good[-1]}
                avg["skipped"] = float(len(window) - len(good))
                rate = len(window) / max(1e-9, time.monotonic() - t0)
                self._log_metrics({"kind": "train", "step": self.step, "stage": self.stage.name,
                                   "steps_per_s": rate, **avg})
                if bar is None or not sys.stderr.isatty():
                    eta = (total - self.step) / max(rate, 1e-9)
                    self._log_line(f"step {self.step}/{total} {self.stage.name} loss {avg['loss']:.4f} "
                                   f"bpp {avg.get('bpp', 0):.4f} psnr {avg['psnr']:.2f} "
                                   f"{rate:.2f} it/s ETA {eta / 3600:.1f} h")
                window, t0 = [], time.monotonic()
            if self.cfg.val_every > 0 and self.step % self.cfg.val_every == 0 and self.is_main:
                rec = self.validate()
                if rec:
                    self._log_metrics(rec)
                    self._log_line("val " + " ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))
            if persist and self.step % self.cfg.ckpt_every == 0:
                self.save()
            if self.export_dir is not None and time.monotonic() - self._last_export >= self.cfg.export_every_s:
                self.export()
        if bar is not None:
            bar.close()
        if persist:
            self.save()
            self.export()
        return last
