#!/usr/bin/env python
"""Reshape a CADC bundle's latent y, keeping its trained weights, as the warm start of a codec stage.

    python tools/reshape_y.py BUNDLE OUT --channels 128     # more y channels; starts as the same codec
    python tools/reshape_y.py BUNDLE OUT --finer-grid       # y at 1/16 instead of 1/32 (one stride stage fewer)

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
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--channels", type=int, help="y channels of the widened model")
    how.add_argument("--finer-grid", action="store_true", help="y at 1/16 of the side (from 1/32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new channels' random filters")
    args = p.parse_args(argv)

    from gateway.codec.cadc.bundle import load_model, save_bundle
    from gateway.errors import ConfigError
    from gateway.training.reshape_y import finer_grid_model, widen_model

    model = load_model(args.bundle)
    c = model.config.codec
    try:
        new = finer_grid_model(model) if args.finer_grid else widen_model(model, args.channels, seed=args.seed)
    except ConfigError as exc:
        print(f"reshape_y: {exc}", file=sys.stderr)
        return 2
    out = save_bundle(new, args.out)
    n = new.config.codec
    print(f"{args.bundle}: y {c.y_channels} channels at 1/{c.y_downsample} -> {n.y_channels} at 1/{n.y_downsample}; "
          f"wrote {out} (model id {new.model_id:04x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
