#!/usr/bin/env python
"""Widen a CADC bundle's VAE latent to more channels, keeping its trained weights and what it decodes.

    python tools/widen_vae.py BUNDLE OUT --channels 16

(``gateway/training/widen_vae.py``.)  OUT decodes what BUNDLE decodes; its
new latent channels start unused.  Train its VAE first (a ``kind: vae``
stage: ``configs/train/cadc-tiny-vae16.yaml``), then the codec on the wider
latent, with ``tools/train.py --init-bundle OUT`` and a model config of
OUT's shape (``configs/models/cadc-tiny-y16-vae16.yaml``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder to widen")
    p.add_argument("out", help="folder for the new bundle")
    p.add_argument("--channels", type=int, required=True, help="VAE latent channels of the widened model")
    p.add_argument("--seed", type=int, default=0, help="seed of the new channels' random encoder filters")
    args = p.parse_args(argv)

    from gateway.codec.cadc.bundle import load_model, save_bundle
    from gateway.errors import ConfigError
    from gateway.training.widen_vae import widen_vae_model

    model = load_model(args.bundle)
    try:
        wide = widen_vae_model(model, args.channels, seed=args.seed)
    except ConfigError as exc:
        print(f"widen_vae: {exc}", file=sys.stderr)
        return 2
    out = save_bundle(wide, args.out)
    print(f"{args.bundle}: VAE latent {model.config.vae_latent_channels} -> {wide.config.vae_latent_channels} channels, "
          f"l_T {model.config.codec.latent_channels} -> {wide.config.codec.latent_channels}; wrote {out} "
          f"(model id {wide.model_id:04x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
