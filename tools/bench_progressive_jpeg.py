"""Would progressive JPEG give the classical backend previews?  Its cost at full delivery and its prefixes.

For every image and budget (frames of ``--frame-size`` bytes), the baseline
JPEG backend and a progressive variant (libjpeg's default scan script, same
stripping) are each rate-controlled into the budget and decoded: the cost of
progressiveness.  Then the progressive encode at ``--frames`` is cut after 1,
2, ... of its frames and decoded by libjpeg with truncated input allowed (what
a ground station would show as a preview).

    python tools/bench_progressive_jpeg.py [--images DIR] [--limit 8] [--frames 8]

Prints per budget the mean MS-SSIM of both (and how many images the
progressive variant could not fit at all), per prefix the preview's MS-SSIM,
and a ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageFile

KODAK = Path("/work/shared/data/kodak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8, help="budget of the encode whose prefixes are previewed")
    ap.add_argument("--budgets", default="1,2,4,8")
    ap.add_argument("--frame-size", type=int, default=450)
    args = ap.parse_args(argv)

    from gateway.codec import bitstream
    from gateway.codec.classical import JpegCodec
    from gateway.errors import BudgetError
    from gateway.eval.metrics import ms_ssim
    from gateway.ratecontrol import Budget, fit

    class ProgressiveJpeg(JpegCodec):
        default_options: ClassVar[dict[str, Any]] = {**JpegCodec.default_options, "progressive": True}

    baseline, progressive = JpegCodec(), ProgressiveJpeg()
    payload = Budget(1, args.frame_size).payload_capacity
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg"))[: args.limit]
    full: dict[str, dict[int, list[float]]] = {"baseline": {}, "progressive": {}}
    prefix: dict[int, list[float]] = {}
    budgets = [int(b) for b in args.budgets.split(",")]
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        for frames in budgets:
            for name, codec in (("baseline", baseline), ("progressive", progressive)):
                try:
                    result = fit(codec, image, Budget(frames, args.frame_size))
                    value = ms_ssim(image, codec.decode(result.bitstream))
                except BudgetError:
                    value = math.nan  # cannot fit at any quality or downscale
                full[name].setdefault(frames, []).append(value)
        result = fit(progressive, image, Budget(args.frames, args.frame_size))
        header, body = bitstream.unpack(result.bitstream)
        jpeg = progressive._unstrip(body, header.coded_size)
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            for j in range(1, args.frames + 1):
                cut = max(0, j * payload - bitstream.HEADER_SIZE)
                try:
                    with Image.open(io.BytesIO(jpeg[:cut])) as im:
                        im.load()
                        shown = np.asarray(im.convert("RGB").resize(image.shape[1::-1], Image.BICUBIC))
                    value = ms_ssim(image, shown)
                except Exception:  # libjpeg refuses prefixes that end inside the headers
                    value = math.nan
                prefix.setdefault(j, []).append(value)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False

    def mean(values: list[float]) -> float | None:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else None

    summary: dict[str, Any] = {"images": len(files), "budgets": {}, "prefix": {}}
    print(f"{'frames':>6} {'baseline':>9} {'progressive':>12} {'prog. unfit':>12}")
    for frames in budgets:
        b, p = mean(full["baseline"][frames]), mean(full["progressive"][frames])
        unfit = sum(not math.isfinite(v) for v in full["progressive"][frames])
        summary["budgets"][frames] = {"baseline": b, "progressive": p, "progressive_unfit": unfit}
        print(f"{frames:>6} {b if b is not None else float('nan'):>9.4f} "
              f"{p if p is not None else float('nan'):>12.4f} {unfit:>12}")
    print(f"\npreview from the first j of {args.frames} frames of the progressive encode (MS-SSIM)")
    for j, values in sorted(prefix.items()):
        m = mean(values)
        summary["prefix"][j] = m
        print(f"{j:>3}: {m if m is not None else float('nan'):.4f}")
    print("BENCH_JSON " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
