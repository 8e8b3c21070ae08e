"""How encode and decode cost grow with the picture: time per megapixel, its slope, and peak memory.

    python tools/bench_scaling.py [--sizes 0.4,0.8,1,1.6,3.1,12,24] [--frames 4,16]
                                  [--codecs cadc,avif,jxl,webp,jpeg] [--bundle PATH] [--repeat 2] [--out bench-out/scaling]

For every codec, size and frame budget, a fresh Python process rate-controls
(``ratecontrol.fit``) a test picture into the budget and reports the time, the
CPU time and its peak RSS; another fresh process decodes that bitstream (best
of ``--repeat``; for cadc also the UNet and VAE decoder times and the tile
grid) and reports the same.  Fresh processes, so that each peak RSS is that
one size's and nothing is warm from a smaller one.  ``coded`` is the size the
rate controller chose to code (a small budget codes a large picture
downscaled, and the decoder then synthesises only that size): the decode's
scaling is only seen at budgets that keep the picture at full size.  Pictures are
``skimage.data.astronaut`` resized to each size (made on the fly, never
stored).  Printed: one row per run, then per codec and budget the decode and
encode time per megapixel, the log-log slope of time against pixels (1.0 is
linear) and the ratio of the largest size's time per megapixel to that at 1
MP; a last line ``BENCH_JSON {...}`` for ``tools/bench.py``.

Without ``--bundle`` cadc uses a random-init bundle made from
``configs/models/cadc-tiny.yaml`` (its speed does not depend on the weights)
with ``codec.max_pixels`` raised to the format's 64 MP, so that a 24 MP
picture is coded at full size rather than downscaled by the 16 MP default.
The machine's load average is recorded with every row: compare rows of one
run as ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's gateway, also for the parent (children get PYTHONPATH)
#: Megapixels -> (width, height): 3:2 Kodak size, then 4:3 camera sizes.
SIZES = {
    0.4: (768, 512), 0.8: (1024, 768), 1.0: (1152, 864), 1.6: (1536, 1024), 3.1: (2048, 1536),
    12.0: (4000, 3000), 24.0: (6000, 4000),
}
DEFAULT_SIZES = "0.4,0.8,1,1.6,3.1,12,24"


def _picture(width: int, height: int) -> "object":
    import numpy as np
    import skimage.data
    from PIL import Image

    src = Image.fromarray(skimage.data.astronaut())
    return np.asarray(src.resize((width, height), Image.Resampling.LANCZOS))


def _codec(name: str, bundle: str | None) -> "object":
    from gateway.codec.registry import make_codec

    if name == "cadc":
        from gateway.codec.cadc.codec import CADCCodec

        return CADCCodec.from_bundle(bundle)
    return make_codec(name)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_encode(args: argparse.Namespace) -> dict:
    """Rate-control one picture (this process measures only that); write the bitstream to args.stream."""
    import torch

    torch.set_num_threads(args.threads)
    from gateway.ratecontrol import Budget, fit

    codec = _codec(args.codec, args.bundle)
    image = _picture(args.width, args.height)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(codec, image, Budget(args.frames))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(args.stream).write_bytes(result.bitstream)
    return {"encode_s": seconds, "encode_cpu_s": cpu, "encode_rss_mb": _peak_rss_mb(), "bytes": result.bytes,
            "scale": result.scale, "candidates": result.candidates, "load": os.getloadavg()[0]}


def child_decode(args: argparse.Namespace) -> dict:
    """Decode one bitstream ``args.repeat`` times; the best time, its stages, and the peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    codec = _codec(args.codec, args.bundle)
    data = Path(args.stream).read_bytes()
    best: dict = {}
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        _, info = codec.decode_with_info(data)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not best or seconds < best["decode_s"]:
            timings = info.get("timings_ms", {})
            best = {"decode_s": seconds, "decode_cpu_s": cpu, "tiles": info.get("tiles"),
                    "coded": "x".join(map(str, info.get("coded_size") or ())) or None,
                    "unet_s": timings.get("unet", 0.0) / 1e3, "vae_s": timings.get("vae_decode", 0.0) / 1e3}
    best.update(decode_rss_mb=_peak_rss_mb(), load=os.getloadavg()[0])
    return best


def _spawn(mode: str, args: argparse.Namespace, codec: str, size: tuple[int, int], frames: int, stream: Path,
           bundle: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--codec", codec, "--width", str(size[0]),
           "--height", str(size[1]), "--frames", str(frames), "--stream", str(stream), "--repeat", str(args.repeat),
           "--threads", str(args.threads)]
    if bundle:
        cmd += ["--bundle", bundle]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_JSON ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    return json.loads(lines[-1][len("CHILD_JSON "):])


def _random_bundle(root: Path) -> str:
    import yaml

    from gateway.codec.cadc.bundle import create_bundle
    from gateway.codec.cadc.config import CADCConfig

    data = yaml.safe_load((ROOT / "configs" / "models" / "cadc-tiny.yaml").read_text())
    data["codec"]["max_pixels"] = 64_000_000
    return str(create_bundle(CADCConfig.from_dict(data), root / "cadc-tiny-random"))


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(time) against log(megapixels): 1.0 is linear, 2.0 quadratic."""
    pts = [(math.log(mp), math.log(t)) for mp, t in points if t > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var if var else None


def summarize(rows: list[dict]) -> list[dict]:
    """Per codec and budget: time per MP at each size, slopes, and the largest size's s/MP over that at 1 MP."""
    out = []
    for key in sorted({(r["codec"], r["frames"]) for r in rows}):
        mine = sorted((r for r in rows if (r["codec"], r["frames"]) == key and "error" not in r), key=lambda r: r["mp"])
        if not mine:
            continue
        s: dict = {"codec": key[0], "frames": key[1]}
        for what in ("decode", "encode", "decode_cpu", "encode_cpu"):  # CPU time: steadier on a loaded machine
            pts = [(r["mp"], r[f"{what}_s"]) for r in mine if f"{what}_s" in r]
            s[f"{what}_s_per_mp"] = {f"{mp:g}": round(t / mp, 3) for mp, t in pts}
            s[f"{what}_slope"] = None if (b := slope(pts)) is None else round(b, 2)
            one = [t / mp for mp, t in pts if abs(mp - 1.0) < 0.05]
            if one and pts:
                s[f"{what}_ratio_largest_to_1mp"] = round((pts[-1][1] / pts[-1][0]) / one[0], 2)
        s["decode_rss_mb"] = {f"{r['mp']:g}": round(r["decode_rss_mb"]) for r in mine if "decode_rss_mb" in r}
        s["encode_rss_mb"] = {f"{r['mp']:g}": round(r["encode_rss_mb"]) for r in mine if "encode_rss_mb" in r}
        out.append(s)
    return out


def _row_line(row: dict) -> str:
    """One printed table row; '-' for what was not measured (decode columns under --encode-only)."""
    def num(key: str, width: int, fmt: str, scale: float = 1.0) -> str:
        v = row.get(key)
        return f"{'-':>{width}}" if v is None else f"{v * scale:>{width}{fmt}}"

    tiles = row.get("tiles") or {}
    grid = "/".join(f"{a}x{b}" for a, b in tiles.values()) if tiles else "-"
    return (f"{row['codec']:<6}{row['frames']:>7}{row['size']:>11}{row['mp']:>6.1f}{row['bytes']:>7}"
            f"{num('encode_s', 8, '.2f')}{num('encode_cpu_s', 8, '.2f')}{num('encode_rss_mb', 8, '.0f')}"
            f"{num('decode_s', 8, '.2f')}{num('decode_cpu_s', 8, '.2f')}{num('decode_s', 7, '.3f', 1 / row['mp'])}"
            f"{num('unet_s', 8, '.2f')}{num('vae_s', 7, '.2f')}{num('decode_rss_mb', 8, '.0f')}"
            f"{row.get('coded') or '-':>11}{grid:>14}{row['load']:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"megapixels, from {sorted(SIZES)}")
    p.add_argument("--frames", default="4,16")
    p.add_argument("--codecs", default="cadc,avif,jxl,webp,jpeg")
    p.add_argument("--bundle", default=None, help="cadc bundle (default: random-init cadc-tiny, 64 MP limit)")
    p.add_argument("--repeat", type=int, default=2, help="decodes per bitstream; the best counts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/scaling"))
    p.add_argument("--encode-only", action="store_true", help="rate-control only; no decode processes")
    # A child process runs one measurement.
    p.add_argument("--child", choices=("encode", "decode"), help=argparse.SUPPRESS)
    p.add_argument("--codec", help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stream", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.frames = int(args.frames)
        result = child_encode(args) if args.child == "encode" else child_decode(args)
        print("CHILD_JSON " + json.dumps(result))
        return 0

    sizes = [float(s) for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory()
    bundle = args.bundle
    if "cadc" in args.codecs.split(",") and bundle is None:
        bundle = _random_bundle(Path(tmp.name))
    rows: list[dict] = []
    print(f"{'codec':<6}{'frames':>7}{'size':>11}{'MP':>6}{'bytes':>7}{'enc s':>8}{'enc cpu':>8}{'enc MB':>8}"
          f"{'dec s':>8}{'dec cpu':>8}{'s/MP':>7}{'UNet s':>8}{'VAE s':>7}{'dec MB':>8}{'coded':>11}{'tiles':>14}{'load':>6}")
    for codec in args.codecs.split(","):
        for frames in (int(f) for f in args.frames.split(",")):
            for mp in sizes:
                size = SIZES[mp]
                stream = Path(tmp.name) / f"{codec}-{frames}-{mp}.bin"
                row = {"codec": codec, "frames": frames, "mp": size[0] * size[1] / 1e6, "size": f"{size[0]}x{size[1]}"}
                row.update(_spawn("encode", args, codec, size, frames, stream, bundle))
                if "error" not in row and not args.encode_only:
                    row.update(_spawn("decode", args, codec, size, frames, stream, bundle))
                rows.append(row)
                if "error" in row:
                    print(f"{codec:<6}{frames:>7}{row['size']:>11}  failed: {row['error']}", flush=True)
                    continue
                print(_row_line(row), flush=True)
    summary = summarize(rows)
    for s in summary:
        print(f"{s['codec']} {s['frames']} frames: decode s/MP {s['decode_s_per_mp']} slope {s['decode_slope']} "
              f"largest/1MP {s.get('decode_ratio_largest_to_1mp')}; encode s/MP {s['encode_s_per_mp']} "
              f"slope {s['encode_slope']}")
        print(f"{s['codec']} {s['frames']} frames, CPU time: decode s/MP {s['decode_cpu_s_per_mp']} slope "
              f"{s['decode_cpu_slope']}; encode s/MP {s['encode_cpu_s_per_mp']} slope {s['encode_cpu_slope']}")
    result = {"rows": rows, "summary": summary, "when": time.strftime("%Y-%m-%d %H:%M"),
              "threads": args.threads, "bundle": args.bundle or "random-init cadc-tiny (max_pixels 64e6)"}
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.out / 'scaling.json'}")
    print("BENCH_JSON " + json.dumps({"summary": summary, "rows": rows}))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
