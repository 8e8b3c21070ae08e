"""Seams: tiled against untiled CADC decodes of the same bitstreams (PSNR difference, a crop across a tile edge).

    python tools/bench_seams.py [--images /work/shared/data/kodak] [--bundle gateway/bundles/cadc-tiny]
                                [--frames 4] [--unet-tile 48 --unet-overlap 16 --vae-tile 48 --vae-overlap 8]
                                [--limit N] [--out bench-out/seams]

Every picture is rate-controlled once (``ratecontrol.fit``) and its bitstream
decoded twice: untiled (tiling off, the whole latent at once) and in tiles of
the sizes given (smaller than the bundle's defaults, which keep a Kodak-size
picture in one tile, so that a 768x512 picture is cut into several).  Printed
per picture: the PSNR of each decode against the original, their difference
(tiled minus untiled) and the PSNR of the tiled decode against the untiled one;
then the means.  For the first picture a crop across the first vertical UNet
tile edge (the middle of the first column overlap) is saved as
``seam-crop.png``: untiled, tiled and |tiled - untiled| x 8 stacked, the whole
overlap band and 64 pixels either side, enlarged 2x, the band marked by red
ticks at the top of each.  Pictures are read from
``--images`` and never copied anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def seam_crop(untiled: np.ndarray, tiled: np.ndarray, overlap_px: tuple[int, int], size: int, height: int) -> np.ndarray:
    """untiled / tiled / |diff| x 8 (stacked), ``size`` pixels wide around the column overlap ``overlap_px`` =
    (start, stop), ``height`` high from the middle of the picture, enlarged 2x; red ticks over the overlap."""
    h, w = untiled.shape[:2]
    centre = (overlap_px[0] + overlap_px[1]) // 2
    left = min(max(0, centre - size // 2), max(0, w - size))
    top = max(0, (h - height) // 2)
    sl = np.s_[top : top + height, left : left + size]
    diff = np.clip(np.abs(tiled[sl].astype(int) - untiled[sl].astype(int)) * 8, 0, 255).astype(np.uint8)
    gap = np.full((4, size, 3), 255, dtype=np.uint8)
    panels = []
    band = [max(0, overlap_px[0] - left), min(size, overlap_px[1] - left)]
    for part in (untiled[sl], tiled[sl], diff):
        part = part.copy()
        part[:3, band[0] : band[1]] = (255, 0, 0)  # red ticks over the overlap band
        panels += [part, gap]
    return np.concatenate(panels[:-1], axis=0).repeat(2, axis=0).repeat(2, axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=Path("/work/shared/data/kodak"))
    p.add_argument("--bundle", default=str(ROOT / "gateway" / "bundles" / "cadc-tiny"))
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--unet-tile", type=int, default=48)
    p.add_argument("--unet-overlap", type=int, default=16)
    p.add_argument("--vae-tile", type=int, default=48)
    p.add_argument("--vae-overlap", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="only the first N pictures (0: all)")
    p.add_argument("--out", type=Path, default=Path("bench-out/seams"))
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    from gateway.codec.cadc.codec import CADCCodec
    from gateway.codec.cadc.tiled_synthesis import LATENT_SCALE, TileSettings
    from gateway.ratecontrol import Budget, fit

    torch.set_num_threads(args.threads)
    codec = CADCCodec.from_bundle(args.bundle)
    untiled_settings = TileSettings(0, 0, 0, 0)
    tiled_settings = TileSettings(args.unet_tile, args.unet_overlap, args.vae_tile, args.vae_overlap)
    paths = sorted(args.images.glob("*.png"))[: args.limit or None]
    if not paths:
        p.error(f"no PNG pictures in {args.images}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'picture':<12}{'bytes':>7}{'untiled dB':>11}{'tiled dB':>10}{'diff dB':>9}{'tiled/untiled dB':>17}"
          f"{'max |d|':>8}{'tiles':>12}")
    for i, path in enumerate(paths):
        image = np.asarray(Image.open(path).convert("RGB"))
        result = fit(codec, image, Budget(args.frames))
        codec.tiles = untiled_settings
        t0 = time.perf_counter()
        a, _ = codec.decode_with_info(result.bitstream)
        t_untiled = time.perf_counter() - t0
        codec.tiles = tiled_settings
        t0 = time.perf_counter()
        b, info = codec.decode_with_info(result.bitstream)
        t_tiled = time.perf_counter() - t0
        row = {
            "picture": path.name, "bytes": result.bytes, "untiled_psnr": psnr(image, a), "tiled_psnr": psnr(image, b),
            "tiled_vs_untiled_psnr": psnr(a, b), "max_abs_diff": int(np.abs(a.astype(int) - b.astype(int)).max()),
            "tiles": info["tiles"], "untiled_s": t_untiled, "tiled_s": t_tiled,
        }
        row["diff_db"] = row["tiled_psnr"] - row["untiled_psnr"]
        rows.append(row)
        grid = "/".join(f"{r}x{c}" for r, c in info["tiles"].values())
        print(f"{path.stem:<12}{result.bytes:>7}{row['untiled_psnr']:>11.3f}{row['tiled_psnr']:>10.3f}"
              f"{row['diff_db']:>+9.3f}{row['tiled_vs_untiled_psnr']:>17.2f}{row['max_abs_diff']:>8}{grid:>12}",
              flush=True)
        if i == 0:
            from gateway.codec.cadc.tile_grid import spans

            cfg = codec.model.config.codec
            cw, ch = info["coded_size"]
            latent_w = -(-cw // cfg.pad_multiple) * cfg.pad_multiple // LATENT_SCALE
            # The UNet windows as tiled_synthesis places them (starts on g_s's and the UNet's grids).
            align = math.lcm(cfg.y_downsample // LATENT_SCALE,
                             2 ** (len(codec.model.unet.config.block_out_channels) - 1))
            cols = spans(latent_w, args.unet_tile, args.unet_overlap, align)
            if len(cols) > 1 and (cw, ch) == image.shape[1::-1]:
                overlap = (cols[1].start * LATENT_SCALE, cols[0].stop * LATENT_SCALE)
                width = min(cw, overlap[1] - overlap[0] + 128)  # the whole blend band and 64 pixels either side
                Image.fromarray(seam_crop(a, b, overlap, width, 160)).save(args.out / "seam-crop.png")
                print(f"crop of {path.name} across the UNet tile overlap x={overlap[0]}..{overlap[1]}: "
                      f"{args.out / 'seam-crop.png'}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("untiled_psnr", "tiled_psnr", "diff_db")}
    finite = [r["tiled_vs_untiled_psnr"] for r in rows if math.isfinite(r["tiled_vs_untiled_psnr"])]
    mean["tiled_vs_untiled_psnr"] = float(np.mean(finite)) if finite else math.inf
    mean["abs_diff_db"] = float(np.mean([abs(r["diff_db"]) for r in rows]))
    print(f"mean over {len(rows)}: untiled {mean['untiled_psnr']:.3f} dB, tiled {mean['tiled_psnr']:.3f} dB, "
          f"difference {mean['diff_db']:+.3f} dB (mean |difference| {mean['abs_diff_db']:.3f} dB); "
          f"tiled against untiled {mean['tiled_vs_untiled_psnr']:.2f} dB")
    result_json = {"rows": rows, "mean": mean, "tiles": dataclasses.asdict(tiled_settings), "bundle": args.bundle, "frames": args.frames, "threads": args.threads}
    (args.out / "seams.json").write_text(json.dumps(result_json, indent=2, default=str))
    print("BENCH_JSON " + json.dumps({"mean": mean}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
