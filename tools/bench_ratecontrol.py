"""Benchmark the rate controller on Kodak: budget utilization and encode time per codec.

For every image and budget (frames of 450 B) it runs :func:`gateway.ratecontrol.fit`
and records bytes used / bytes available, the wall time of the whole
rate-controlled encode and the MSE/PSNR of the decoded image.  Prints a table
and one JSON line (``BENCH_JSON {...}``) for scripts.

    python tools/bench_ratecontrol.py                       # classical codecs, Kodak, 1/2/4/8 frames
    python tools/bench_ratecontrol.py --codecs cadc,avif    # CADC against its reference peer
    python tools/bench_ratecontrol.py --limit 6 --frames 1,4
    python tools/bench_ratecontrol.py --codecs cadc,avif --no-decode --bundle PATH   # utilization + time only

Images are the outer loop and codecs the inner one, so every codec encodes the
same image back to back; with more than one codec the table also gives each
codec's encode time as a ratio to the first codec's on the same image and
budget (median and max), which stays meaningful on a loaded host where the
absolute times do not.  Timings are for this host (``os.cpu_count()`` and the
torch thread count are printed with them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gateway.codec.registry import CODEC_NAMES, decode_any, make_codec
from gateway.errors import BudgetError, SatgwError
from gateway.ratecontrol import Budget, fit

DEFAULT_DATA = Path("/work/shared/data/kodak")


def _parse_options(items: list[str]) -> dict[str, dict[str, int]]:
    """``avif:speed=8`` -> {"avif": {"speed": 8}}."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        codec, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if not (codec and key and value):
            raise SystemExit(f"--option {item!r}: use CODEC:NAME=INT, e.g. avif:speed=8")
        out.setdefault(codec, {})[key] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns a process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of PNG images (default: Kodak)")
    ap.add_argument("--codecs", default="avif,jxl,webp,jpeg", help=f"comma list from {','.join(CODEC_NAMES)}")
    ap.add_argument("--frames", default="1,2,4,8", help="comma list of frame budgets")
    ap.add_argument("--frame-size", type=int, default=450)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    ap.add_argument("--bundle", default=None, help="CADC bundle folder (default: embedded cadc-tiny)")
    ap.add_argument("--option", action="append", default=[], help="encoder option, e.g. avif:speed=8 (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CADC), default 2")
    ap.add_argument("--no-decode", action="store_true", help="skip decoding (no PSNR; CADC decodes take ~1 s each)")
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass

    paths = sorted(args.data.glob("*.png"))
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        print(f"no PNG images in {args.data}", file=sys.stderr)
        return 1
    budgets = [int(f) for f in args.frames.split(",")]
    options = _parse_options(args.option)
    images = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in paths}

    summary: dict[str, dict[str, object]] = {}
    codecs = {}
    for name in [c.strip() for c in args.codecs.split(",") if c.strip()]:
        try:
            codecs[name] = make_codec(name, bundle=args.bundle, **options.get(name, {}))
        except (SatgwError, ImportError) as exc:
            print(f"skipping {name}: cannot load it ({type(exc).__name__}: {exc})")
            summary[name] = {"skipped": str(exc)}
    keys = ("util", "sec", "psnr", "cand", "ratio")
    rows = {name: {n: {k: [] for k in keys} for n in budgets} for name in codecs}
    failures = {name: 0 for name in codecs}
    for name, codec in codecs.items():  # warm-up (model loading, first-call allocations)
        try:
            fit(codec, next(iter(images.values())), Budget(budgets[0], args.frame_size))
        except BudgetError:
            pass
    for fname, img in images.items():
        for n in budgets:
            first_sec = None
            for name, codec in codecs.items():
                try:
                    r = fit(codec, img, Budget(n, args.frame_size), label=fname)
                except BudgetError as exc:
                    failures[name] += 1
                    print(f"  {name} {fname} {n} frames: {exc}")
                    continue
                v = rows[name][n]
                v["util"].append(r.utilization)
                v["sec"].append(r.seconds)
                v["cand"].append(r.candidates)
                if first_sec is None:
                    first_sec = r.seconds
                v["ratio"].append(r.seconds / first_sec)
                if not args.no_decode:
                    out = decode_any(r.bitstream, {name: codec})
                    mse = float(np.mean((out.astype(np.float64) - img) ** 2))
                    v["psnr"].append(10 * math.log10(255.0**2 / max(mse, 1e-9)))
    for name in codecs:
        per_budget = {}
        for n, v in rows[name].items():
            if not v["util"]:
                continue
            per_budget[n] = {
                "util_median": statistics.median(v["util"]),
                "util_min": min(v["util"]),
                "sec_median": statistics.median(v["sec"]),
                "sec_max": max(v["sec"]),
                "time_ratio_median": statistics.median(v["ratio"]),
                "time_ratio_max": max(v["ratio"]),
                "psnr_mean": statistics.fmean(v["psnr"]) if v["psnr"] else float("nan"),
                "candidates_median": statistics.median(v["cand"]),
            }
        all_util = [u for v in rows[name].values() for u in v["util"]]
        all_sec = [s for v in rows[name].values() for s in v["sec"]]
        summary[name] = {
            "per_budget": per_budget,
            "util_median": statistics.median(all_util) if all_util else None,
            "util_min": min(all_util) if all_util else None,
            "sec_median": statistics.median(all_sec) if all_sec else None,
            "sec_max": max(all_sec) if all_sec else None,
            "budget_errors": failures[name],
        }

    print(f"\nrate control on {len(images)} images from {args.data}, {args.frame_size} B frames, "
          f"{os.cpu_count()} CPUs, {args.threads} torch threads, {time.strftime('%Y-%m-%d %H:%M')}")
    first = next(iter(codecs), "-")
    print(f"{'codec':<6} {'frames':>6} {'util med':>9} {'util min':>9} {'s med':>7} {'s max':>7} "
          f"{'/' + first + ' med':>10} {'max':>6} {'PSNR':>6} {'cand':>5}")
    for name, s in summary.items():
        if "skipped" in s:
            print(f"{name:<6} skipped: {s['skipped']}")
            continue
        for n, b in s["per_budget"].items():  # type: ignore[union-attr]
            print(f"{name:<6} {n:>6} {b['util_median']:>9.3f} {b['util_min']:>9.3f} {b['sec_median']:>7.3f} "
                  f"{b['sec_max']:>7.3f} {b['time_ratio_median']:>10.2f} {b['time_ratio_max']:>6.2f} "
                  f"{b['psnr_mean']:>6.2f} {b['candidates_median']:>5.0f}")
        print(f"{name:<6} {'all':>6} {s['util_median']:>9.3f} {s['util_min']:>9.3f} {s['sec_median']:>7.3f} "
              f"{s['sec_max']:>7.3f}   budget errors: {s['budget_errors']}")
    print("BENCH_JSON " + json.dumps({"images": len(images), "frame_size": args.frame_size, "budgets": budgets,
                                      "cpus": os.cpu_count(), "codecs": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
