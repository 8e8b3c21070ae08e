#!/usr/bin/env python
"""Measure the ``scaling_factor`` a bundle's VAE needs (unit-variance latents) on training images.

    python tools/vae_scale.py BUNDLE IMAGE_FOLDER [IMAGE_FOLDER ...] [--limit N] [--crop 256]

Prints the latent standard deviation and ``vae.scaling_factor: 1/std`` to put
into the model config (``configs/models/*.yaml``) before the codec stages are
trained on top of that VAE: the UNet and the latent-alignment loss then work
in a unit-variance latent space, as with Stable Diffusion's VAEs.  Changing
the factor of a trained codec changes its l0, so set it once, between stage 0
and stage 1.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder whose VAE to measure")
    p.add_argument("folders", nargs="+", help="training image folders (never the evaluation set)")
    p.add_argument("--limit", type=int, default=200, help="images to use (spread over the folders' sorted list)")
    p.add_argument("--crop", type=int, default=256, help="centre crop side")
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    from gateway.codec.cadc.bundle import load_model
    from gateway.training.data import ImageBank
    from gateway.training.vae_io import latent_std

    model = load_model(args.bundle)
    bank = ImageBank(args.folders)
    step = max(1, len(bank) // args.limit)
    images = bank.images[::step][: args.limit]
    std = latent_std(model, images, args.crop)
    current = float(model.vae.config.scaling_factor)
    print(f"{len(images)} images, {args.crop}px centre crops: latent std {std:.4f} (unscaled); "
          f"current scaling_factor {current:g}")
    print(f"vae.scaling_factor: {1.0 / std:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
