#!/usr/bin/env python
"""How many bits the training pass's rate proxy counts against the bits of the symbols actually written.

    python tools/rate_proxy_gap.py BUNDLE --images DIR [--limit 6] [--lams 512,64,16,4,0.5] [--draws 4]

Training prices y and z on y + U(-1/2, 1/2); the encoder writes round(y).  Per λ
(Δ 1): the mean bits per pixel by the proxy (averaged over ``--draws`` noise
draws) and of the rounded symbols (the same training pass with
``rounded_rate``), over the first ``--limit`` pictures of DIR's sorted list,
each cropped to a multiple of 128.  MODEL_CARD.md, run 20, has the shipped
model's figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@torch.no_grad()
def bits_per_pixel(model: torch.nn.Module, x: torch.Tensor, lam: float, rounded: bool) -> float:
    """Bits of y and z per pixel for picture ``x`` ([1, 3, H, W] in [0, 1]) at λ, Δ 1."""
    out = model(x, torch.tensor([lam]), rounded_rate=rounded)
    return float(out["bits_y"].sum() + out["bits_z"].sum()) / (x.shape[-2] * x.shape[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--images", required=True, help="folder of pictures")
    p.add_argument("--limit", type=int, default=6, help="the first N pictures of the sorted folder")
    p.add_argument("--lams", default="512,64,16,4,0.5", help="comma-separated λ values")
    p.add_argument("--draws", type=int, default=4, help="noise draws averaged for the proxy")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from gateway.codec.cadc.bundle import load_model

    files = sorted(f for f in Path(args.images).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    pixels = []
    for f in files:
        a = np.array(Image.open(f).convert("RGB"))
        h, w = a.shape[0] // 128 * 128, a.shape[1] // 128 * 128
        if h and w:
            pixels.append(torch.from_numpy(np.ascontiguousarray(a[:h, :w])).permute(2, 0, 1)[None].float() / 255.0)
    if not pixels:
        print(f"rate_proxy_gap: no pictures of at least 128x128 in {args.images}", file=sys.stderr)
        return 2
    model = load_model(args.bundle).float().eval()
    print(f"{len(pixels)} pictures from {args.images}; bundle {args.bundle}")
    print("λ | bpp by the proxy | bpp of the rounded symbols | rounded / proxy")
    for lam in (float(v) for v in args.lams.split(",")):
        rows = []
        for s, x in enumerate(pixels):
            torch.manual_seed(s)
            proxy = float(np.mean([bits_per_pixel(model, x, lam, False) for _ in range(args.draws)]))
            rows.append((proxy, bits_per_pixel(model, x, lam, True)))
        r = np.array(rows)
        print(f"{lam:g} | {r[:, 0].mean():.4f} | {r[:, 1].mean():.4f} | {np.mean(r[:, 1] / r[:, 0]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
