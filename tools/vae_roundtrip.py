#!/usr/bin/env python
"""The VAE's round trip alone (encode, decode, colour correction): the ceiling of every codec on top of it.

    python tools/vae_roundtrip.py BUNDLE [BUNDLE ...] --images DIR [--limit 12] [--threads 2]

Per bundle: mean PSNR, MS-SSIM, block-mean CIELAB ΔE (16×16, as tools/eval.py)
and butteraugli (when the tool is installed) of x against its VAE round trip,
over ``--limit`` pictures spread over DIR's sorted list, each cropped to a
multiple of 8.  A codec's pictures cannot get closer than this; compare with
the classical codecs' figures at the budget in question (tools/eval.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def pictures(folder: Path, limit: int) -> list[Path]:
    """``limit`` image files spread evenly over ``folder``'s sorted list (all of them if fewer)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) <= limit:
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


@torch.no_grad()
def round_trip(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """``image`` (uint8 HxWx3, sides multiples of 8) through the model's VAE and colour correction."""
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    out = model.decode_pixels(model.vae_encode(x))
    return (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", help="bundle folders whose VAE to measure")
    p.add_argument("--images", required=True, help="folder of pictures")
    p.add_argument("--limit", type=int, default=12, help="pictures to use (spread over the sorted list)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from gateway.codec.cadc.bundle import load_model
    from gateway.codec.image_metrics import ms_ssim, psnr
    from gateway.eval.metrics import block_delta_e, butteraugli

    files = pictures(Path(args.images), args.limit)
    if not files:
        print(f"vae_roundtrip: no pictures in {args.images}", file=sys.stderr)
        return 2
    images = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"))
        images.append(a[: a.shape[0] // 8 * 8, : a.shape[1] // 8 * 8])
    print(f"{len(images)} pictures from {args.images}")
    print(f"{'bundle':<40} {'PSNR':>7} {'MS-SSIM':>8} {'ΔE':>6} {'butteraugli':>11}")
    for bundle in args.bundles:
        model = load_model(bundle).eval()
        rows = []
        for a in images:
            b = round_trip(model, a)
            rows.append((psnr(a, b), ms_ssim(a, b), block_delta_e(a, b), butteraugli(a, b)))
        mean = [float(np.mean([r[i] for r in rows])) for i in range(3)]
        ba = [r[3] for r in rows if r[3] is not None]
        ba_text = f"{np.mean(ba):11.2f}" if len(ba) == len(rows) else f"{'n/a':>11}"
        print(f"{bundle:<40} {mean[0]:7.2f} {mean[1]:8.4f} {mean[2]:6.2f} {ba_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
