"""Progressive delivery of CADC: quality from the first j of k frames, against complete j-frame encodes.

For every image: one rate-controlled encode at ``--frames`` (default 8); its
bitstream is cut after 1, 2, ... of the frames it occupies (the packetizer
fills frames in order, so a prefix of j frames is the first j x payload bytes)
and decoded with ``partial=True``; beside it, a complete encode at j frames.
Also the cost of progressiveness at k of k frames: the format-2 stream (layer
table) against a format-1 stream of the same model at the same budget.

    python tools/bench_progressive.py [--bundle PATH] [--images DIR] [--limit N] [--frames 8] [--no-slow-metrics]

Prints a table per j (means over images) and a ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

KODAK = Path("/work/shared/data/kodak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="CADC bundle folder (default: the embedded cadc-tiny)")
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--frames", type=int, default=8, help="frames of the progressive encode")
    ap.add_argument("--frame-size", type=int, default=450)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-slow-metrics", action="store_true", help="skip butteraugli")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gateway.codec.cadc.codec import CADCCodec
    from gateway.eval import metrics
    from gateway.ratecontrol import Budget, fit

    codec = CADCCodec.from_bundle(args.bundle)
    v1 = CADCCodec(codec.model)
    v1.bitstream_version = 1
    payload = Budget(1, args.frame_size).payload_capacity
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg"))[: args.limit]
    rows: dict[int, dict[str, list[float]]] = {}

    def measure(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
        out = {"psnr": metrics.psnr(original, decoded), "ms_ssim": metrics.ms_ssim(original, decoded)}
        if not args.no_slow_metrics:
            b = metrics.butteraugli(original, decoded)
            if b is not None:
                out["butteraugli"] = b
        return out

    cost: list[float] = []
    for path in files:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        full = fit(codec, image, Budget(args.frames, args.frame_size)).bitstream
        used = -(-len(full) // payload)
        for j in range(1, args.frames + 1):
            row = rows.setdefault(j, {})
            if j <= used:
                try:
                    decoded, info = codec.decode_with_info(full[: j * payload], partial=True)
                    for k, v in measure(image, decoded).items():
                        row.setdefault(f"prefix_{k}", []).append(v)
                    row.setdefault("prefix_layers", []).append(info["layers"])
                except Exception as exc:  # a prefix without ẑ: no picture yet
                    row.setdefault("prefix_failed", []).append(1.0)
                    print(f"{path.name} {j}/{used} frames: {exc}", file=sys.stderr)
            complete = fit(codec, image, Budget(j, args.frame_size)).bitstream
            for k, v in measure(image, codec.decode(complete)).items():
                row.setdefault(f"complete_{k}", []).append(v)
        old = fit(v1, image, Budget(args.frames, args.frame_size)).bitstream
        cost.append(metrics.ms_ssim(image, codec.decode(full)) - metrics.ms_ssim(image, v1.decode(old)))
        print(f"{path.name}: {len(full)} B in {used} frames; format 1 at the same budget: {len(old)} B", flush=True)

    keys = ["prefix_layers", "prefix_ms_ssim", "complete_ms_ssim", "prefix_psnr", "complete_psnr",
            "prefix_butteraugli", "complete_butteraugli"]
    print("\n| frames received | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    summary = {}
    for j, row in sorted(rows.items()):
        means = {k: statistics.fmean(v) for k, v in row.items() if v}
        summary[j] = means
        print(f"| {j} | " + " | ".join(f"{means[k]:.4g}" if k in means else "–" for k in keys) + " |")
    print(f"\ncost of progressiveness at {args.frames} of {args.frames} frames (format 2 minus format 1, MS-SSIM): "
          f"mean {statistics.fmean(cost):+.4f}, worst {min(cost):+.4f}")
    print("BENCH_JSON " + json.dumps({"frames": args.frames, "images": len(files), "by_frames": summary,
                                      "progressive_cost_ms_ssim": statistics.fmean(cost)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
