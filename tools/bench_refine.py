"""What encoder-side refinement costs and gives: time, peak memory and quality, plain fit against refined.

    python tools/bench_refine.py [--sizes 768x512,1152x864] [--frames 4] [--steps 16] [--bundle PATH]

For each size, a fresh Python process (so each peak RSS is that size's
alone) rate-controls ``skimage.data.astronaut`` resized to it into the
budget, once plainly and once with ``--steps`` of refinement
(:mod:`gateway.codec.cadc.refine`), decodes both and prints bytes, PSNR,
MS-SSIM, the seconds of each fit and the process's peak RSS before and
after refining.  The picture is made on the fly (never stored).  Compare
rows of one run; the machine's load changes the seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _one(width: int, height: int, frames: int, steps: int, bundle: str | None) -> dict:
    import numpy as np
    import skimage.data
    from PIL import Image

    from gateway.codec.image_metrics import ms_ssim, psnr
    from gateway.codec.registry import make_codec
    from gateway.ratecontrol import fit

    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS))
    codec = make_codec("cadc", bundle=bundle, device="cpu")
    row: dict = {"size": f"{width}x{height}", "frames": frames, "steps": steps}
    for label, n in (("plain", 0), ("refined", steps)):
        codec.refine_settings = type(codec.refine_settings)(iterations=n, max_pixels=max(width * height, 1))
        t0 = time.perf_counter()
        result = fit(codec, image, frames)
        seconds = time.perf_counter() - t0
        decoded = codec.decode(result.bitstream)
        row[label] = {"bytes": result.bytes, "psnr": round(psnr(image, decoded), 3),
                      "ms_ssim": round(ms_ssim(image, decoded), 4), "fit_s": round(seconds, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="768x512,1152x864", help="comma-separated WxH")
    ap.add_argument("--frames", type=int, default=4, help="budget in 450-byte frames")
    ap.add_argument("--steps", type=int, default=16, help="refinement steps")
    ap.add_argument("--bundle", help="CADC bundle folder (default: the embedded cadc-tiny)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        w, h = (int(v) for v in args.child.split("x"))
        print("ROW " + json.dumps(_one(w, h, args.frames, args.steps, args.bundle)), flush=True)
        return 0
    for size in args.sizes.split(","):
        cmd = [sys.executable, __file__, "--child", size, "--frames", str(args.frames), "--steps", str(args.steps)]
        if args.bundle:
            cmd += ["--bundle", args.bundle]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
        if line is None:
            print(f"{size}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        row = json.loads(line[4:])
        p, r = row["plain"], row["refined"]
        print(f"{row['size']} at {row['frames']} frames, {row['steps']} steps: "
              f"plain {p['bytes']} B {p['psnr']} dB MS-SSIM {p['ms_ssim']} in {p['fit_s']} s (peak {p['peak_rss_mb']} MB) | "
              f"refined {r['bytes']} B {r['psnr']} dB MS-SSIM {r['ms_ssim']} in {r['fit_s']} s "
              f"(peak {r['peak_rss_mb']} MB)", flush=True)
        print("BENCH_JSON " + json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
