#!/usr/bin/env python
"""Train a CADC model (stage 0 VAE, stages 1-2 codec) from a model config and a training recipe.

Single process::

    python tools/train.py --model configs/models/cadc-tiny.yaml --train configs/train/cadc-tiny.yaml \\
        --out /work/ckpt/cadc-tiny --export gateway/bundles/cadc-tiny --resume

Several GPUs / processes (DDP)::

    torchrun --nproc_per_node 8 tools/train.py --model ... --train configs/train/cadc-sd-turbo.yaml --out ...

``--resume`` continues from the newest checkpoint in ``--out`` (and starts
fresh when there is none); ``--init-bundle`` starts a fresh run from a
bundle's weights.  Metrics go to ``<out>/metrics.jsonl`` (and TensorBoard
under ``<out>/tb`` when installed).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gateway.codec.cpu_heap import keep_freed_memory
from gateway.errors import SatgwError
from gateway.training.build import save_run_parts
from gateway.training.config import TrainConfig
from gateway.training.data import ImageBank
from gateway.training.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model config YAML (configs/models/*.yaml)")
    p.add_argument("--train", required=True, help="training recipe YAML (configs/train/*.yaml)")
    p.add_argument("--out", default="runs/cadc", help="checkpoint / metrics folder")
    p.add_argument("--latents-dir", help="folder for the cached VAE latents of the training images (default: --out); "
                   "runs on the same images with the same frozen VAE encoder can share one")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init-bundle", help="fresh runs: start from this bundle's weights wherever names and shapes "
                   "match the --model config (other parts keep their fresh initialisation)")
    p.add_argument("--init-parts", nargs="+", metavar="PREFIX",
                   help="with --init-bundle: copy only parameters whose names start with these prefixes (e.g. vae.)")
    p.add_argument("--init", dest="inits", action="append", nargs="+", default=[], metavar=("SOURCE", "PREFIX"),
                   help="fresh runs: also copy from SOURCE (a bundle folder or a checkpoint file) the parameters "
                   "starting with the PREFIXes (all that fit when none); repeatable, applied after --init-bundle")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config value, e.g. --set codec.ugaq=false (YAML value; repeatable)")
    p.add_argument("--export", help="write the current weights as a bundle here periodically and at the end")
    p.add_argument("--recipe-set", dest="recipe_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training recipe value, e.g. --recipe-set seed=24 --recipe-set stages.0.steps=3600 "
                        "(YAML value; repeatable; a numeric part indexes a list)")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the recipe)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N; under "
                   "torchrun each process takes the GPU of its LOCAL_RANK")
    p.add_argument("--max-steps", type=int, help="stop after this many steps of this invocation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return p.parse_args(argv)


def setup_distributed(device: str | None = None) -> torch.device:
    """Join the torchrun process group when launched by torchrun; pick this process's device.

    ``device`` (``--device``: auto, cpu, cuda, cuda:N; default auto) decides
    CPU or GPU; under torchrun each process takes the GPU of its LOCAL_RANK.
    """
    from gateway.codec.cadc.devices import resolve_device

    chosen = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        if chosen.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    return chosen


def build_model(model_config: str, overrides: list[str], init_bundle: str | None,
                init_parts: list[str] | None = None, inits: list[list[str]] | None = None,
                run_dir: str | None = None, resume: bool = False):
    """The model a run starts from (see :mod:`gateway.training.build`)."""
    from gateway.training.build import build_model as build

    return build(model_config, overrides, init_bundle, init_parts, inits, run_dir=run_dir, resume=resume)


def export_bundle(model, folder: Path) -> None:
    """Save ``model`` as a complete bundle in ``folder`` (the codec's own save_bundle)."""
    from gateway.codec.cadc.bundle import save_bundle

    save_bundle(model, folder)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = TrainConfig.from_yaml(args.train, args.recipe_overrides)
        torch.set_num_threads(args.threads or cfg.threads)
        device = setup_distributed(args.device)
        if device.type == "cpu":
            keep_freed_memory()  # activations and their gradients would be page-faulted in again every step
        rank = dist.get_rank() if dist.is_initialized() else 0
        random.seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)
        torch.manual_seed(cfg.seed + rank)
        fresh = not (args.resume and _has_checkpoint(args.out))
        # A resume takes its tensors from the checkpoint; the init bundle then only saves building random parts.
        model = build_model(args.model, args.overrides, args.init_bundle, args.init_parts,
                            args.inits if fresh else None, run_dir=args.out, resume=not fresh)
        if fresh and rank == 0:
            save_run_parts(model, args.out)
        train_bank = ImageBank(cfg.data.train, cache_mb=cfg.data.cache_mb)
        val_bank = ImageBank(cfg.data.val, limit=cfg.data.val_limit) if cfg.data.val else None
        if rank == 0:
            print(f"data: {len(train_bank)} training images from {cfg.data.train}; "
                  f"{len(val_bank) if val_bank else 0} validation images from {cfg.data.val}", flush=True)
        trainer = Trainer(model, cfg, args.out, train_bank, val_bank, export_dir=args.export,
                          export_fn=export_bundle if args.export else None, device=device,
                          progress=not args.no_progress, latents_dir=args.latents_dir)
        if args.resume:
            trainer.resume()
        trainer.run(max_steps=args.max_steps)
    except SatgwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _has_checkpoint(folder: str) -> bool:
    from gateway.training.checkpoint import latest_checkpoint

    return latest_checkpoint(folder) is not None


if __name__ == "__main__":
    sys.exit(main())
