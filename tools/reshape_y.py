#!/usr/bin/env python
"""Reshape a CADC bundle's latent y, keeping its trained weights, as the warm start of a codec stage.

    python tools/reshape_y.py BUNDLE OUT --channels 128     # more y channels; starts as the same codec
    python tools/reshape_y.py BUNDLE OUT --finer-grid       # y at 1/16 instead of 1/32 (one stride stage fewer)
    python tools/reshape_y.py BUNDLE OUT --finer-grid --lam-range 0.5 2048   # and gains resampled to a new λ range

(``gateway/training/reshape_y.py``.)  Train OUT with ``tools/train.py
--init-bundle OUT`` and a model config of the same shape
(``configs/models/cadc-tiny-y128.yaml``, ``configs/models/cadc-tiny-y16.yaml``).
A widened bundle decodes nearly what BUNDLE decodes; a finer grid changes what
y means, so its codec has to relearn (from trained filters).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder to reshape")
    p.add_argument("out", help="folder for the new bundle")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--channels", type=int, help="y channels of the widened model")
    how.add_argument("--finer-grid", action="store_true", help="y at 1/16 of the side (from 1/32)")
    p.add_argument("--lam-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="resample the λ gains to span this range (train with --set codec.lam_range=[LOW,HIGH])")
    p.add_argument("--seed", type=int, default=0, help="seed of the new channels' random filters")
    args = p.parse_args(argv)
    if not (args.channels or args.finer_grid or args.lam_range):
        p.error("say what to reshape: --channels, --finer-grid and/or --lam-range")

    from gateway.codec.cadc.bundle import load_model, save_bundle
    from gateway.errors import ConfigError
    from gateway.training.reshape_y import finer_grid_model, lam_range_model, widen_model

    model = load_model(args.bundle)
    c = model.config.codec
    try:
        new = model
        if args.finer_grid:
            new = finer_grid_model(new)
        elif args.channels:
            new = widen_model(new, args.channels, seed=args.seed)
        if args.lam_range:
            new = lam_range_model(new, tuple(args.lam_range))
    except ConfigError as exc:
        print(f"reshape_y: {exc}", file=sys.stderr)
        return 2
    out = save_bundle(new, args.out)
    n = new.config.codec
    print(f"{args.bundle}: y {c.y_channels} channels at 1/{c.y_downsample} -> {n.y_channels} at 1/{n.y_downsample}, "
          f"λ {c.lam_range} -> {n.lam_range}; wrote {out} (model id {new.model_id:04x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
