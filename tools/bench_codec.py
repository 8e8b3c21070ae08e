"""Benchmark the CADC codec on Kodak: encode (one λ, Δ) and decode time per image, per-stage decode timings.

    python tools/bench_codec.py [--bundle PATH] [--all] [--images N] [--threads T] [--lam-code C] [--delta-code C]

Uses the embedded cadc-tiny bundle when it has weights, else a random-init
cadc-tiny bundle made in a temp dir (timings are the same; quality is not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

KODAK = Path("/work/shared/data/kodak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: embedded cadc-tiny)")
    parser.add_argument("--kodak", type=Path, default=KODAK)
    parser.add_argument("--all", action="store_true", help="all 24 Kodak images")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lam-code", type=int, default=128)
    parser.add_argument("--delta-code", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gateway.codec.base import Knobs
    from gateway.codec.cadc.bundle import CODEC_WEIGHTS, create_bundle
    from gateway.codec.cadc.codec import CADCCodec
    from gateway.paths import bundle_dir, config_dir

    tmp = None
    path = args.bundle
    if path is None:
        path = bundle_dir("cadc-tiny")
        if not (path / CODEC_WEIGHTS).is_file():
            tmp = tempfile.TemporaryDirectory()
            path = create_bundle(config_dir() / "models" / "cadc-tiny.yaml", Path(tmp.name) / "cadc-tiny")
            print(f"embedded bundle has no weights yet: using a random-init cadc-tiny in {path}")
    codec = CADCCodec.from_bundle(path)
    model = codec.model
    print(f"bundle {path}  model id {codec.model_id:04x}  threads {args.threads}")
    print("parameters:")
    for name, _, count in model.part_sizes():
        print(f"  {name:<19} {count:>12,}")

    files = sorted(args.kodak.glob("kodim*.png"))
    if not files:
        print(f"no Kodak images in {args.kodak}", file=sys.stderr)
        return 1
    files = files if args.all else files[: args.images]
    knobs = Knobs(args.lam_code, args.delta_code)
    print(f"knobs {codec.describe(knobs)}")
    # Warm-up so one-time allocations do not count.
    warm = np.asarray(Image.open(files[0]).convert("RGB"))
    codec.decode(codec.encode(codec.analyze(warm), knobs, (warm.shape[1], warm.shape[0])))
    rows, stages = [], {}
    print(f"{'image':<12}{'size':>10}{'bytes':>8}{'bpp':>8}{'analyze ms':>12}{'encode ms':>11}{'decode ms':>11}")
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"))
        h, w = img.shape[:2]
        t0 = time.perf_counter()
        analysis = codec.analyze(img)
        t1 = time.perf_counter()
        data = codec.encode(analysis, knobs, (w, h))
        t2 = time.perf_counter()
        _, info = codec.decode_with_info(data)
        t3 = time.perf_counter()
        for k, v in info["timings_ms"].items():
            stages.setdefault(k, []).append(v)
        rows.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, len(data)))
        print(f"{f.stem:<12}{f'{w}x{h}':>10}{len(data):>8}{8 * len(data) / (w * h):>8.4f}"
              f"{rows[-1][0]:>12.1f}{rows[-1][1]:>11.1f}{rows[-1][2]:>11.1f}")
    print(f"mean: analyze {statistics.mean(r[0] for r in rows):.1f} ms, encode {statistics.mean(r[1] for r in rows):.1f} ms, "
          f"decode {statistics.mean(r[2] for r in rows):.1f} ms, {statistics.mean(r[3] for r in rows):.0f} bytes")
    print("decode stages (mean ms): " + ", ".join(f"{k} {statistics.mean(v):.1f}" for k, v in stages.items()))
    print("BENCH_JSON " + json.dumps({
        "images": len(rows), "threads": args.threads,
        "analyze_s_median": statistics.median(r[0] for r in rows) / 1000,
        "encode_s_median": statistics.median(r[1] for r in rows) / 1000,
        "decode_s_median": statistics.median(r[2] for r in rows) / 1000,
        "decode_stages_ms": {k: round(statistics.mean(v), 1) for k, v in stages.items()},
    }))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
