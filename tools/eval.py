#!/usr/bin/env python
"""Rate–quality evaluation of satgw's codecs at exactly the budgets the link allows.

Every codec goes through the same rate controller (:func:`gateway.ratecontrol.fit`)
at the same budget of ``frames`` x ``frame_size`` bytes, so the comparison is
the one a ground station would see::

    python tools/eval.py --codecs cadc,avif,jxl,webp,jpeg --images /work/shared/data/kodak \\
        --frames 1,2,4,8 --out eval-out/ [--bundle PATH] [--limit N] [--reference avif]

Writes ``images/<name>.json`` (every measurement of one image),
``summary.json`` and ``summary.md`` (means per codec and budget, BD-rates
against ``--reference``), ``rd_ms_ssim.png`` / ``rd_psnr.png`` (one curve per
codec) and ``crops/<name>_<frames>f.png`` (original | cadc | best classical,
bytes under each).  A codec that cannot meet a budget is recorded with the
budget it would need; it does not stop the run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from gateway.eval import metrics
from gateway.codec import bitstream
from gateway.errors import BudgetError, SatgwError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp"}
QUALITY_KEYS = ("psnr", "ms_ssim", "delta_e", "butteraugli", "ssimulacra")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codecs", default="cadc,avif,jxl,webp,jpeg",
                   help="comma-separated codec names; LABEL=FOLDER adds a CADC bundle under its own label "
                        "(e.g. M0=runs/m0/bundle,M1=runs/m1/bundle for an ablation)")
    p.add_argument("--images", required=True, help="folder of images (or one image file)")
    p.add_argument("--frames", default="1,2,4,8", help="comma-separated budgets in frames")
    p.add_argument("--frame-size", type=int, default=450, help="bytes per frame on the wire")
    p.add_argument("--parity", type=int, default=0, help="erasure-code parity frames per message")
    p.add_argument("--bundle", help="CADC bundle folder for plain cadc (default: the embedded models' ladder, "
                   "each budget encoded by the model the sender picks: gateway/bundles/ladder.yaml)")
    p.add_argument("--device", default="auto", help="where CADC runs: auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="dtype of CADC's UNet, VAE and text models on a GPU: "
                   "auto (fp16), fp16, bf16, fp32")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--refine", action="append", default=[], metavar="LABEL=STEPS",
                   help="encoder-side refinement for the CADC codec LABEL (e.g. cadc-refine=16, with "
                   "cadc-refine=BUNDLE in --codecs); repeatable")
    p.add_argument("--reference", default="avif", help="codec the BD-rates are measured against")
    p.add_argument("--crops", type=int, default=4, help="side-by-side crops for the first N images (0 = none)")
    p.add_argument("--crop-size", type=int, default=256, help="side of the side-by-side crops in pixels")
    p.add_argument("--no-slow-metrics", action="store_true", help="skip butteraugli / ssimulacra")
    p.add_argument("--out", default="eval-out", help="output folder")
    p.add_argument("--reuse", action="store_true",
                   help="keep the measurements already in --out/images for the same codec and budget (a CADC "
                        "record only while its bundle's model id and colour-layer rows are unchanged) and measure only what is "
                        "missing")
    return p.parse_args(argv)


def list_images(path: Path, limit: int | None) -> list[Path]:
    """Images to evaluate, sorted by name."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise SystemExit(f"error: no such image folder or file: {path}")
    if not files:
        raise SystemExit(f"error: no images in {path}")
    return files[:limit] if limit else files


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def quality(original: np.ndarray, decoded: np.ndarray, slow: bool) -> dict[str, float | None]:
    """Every metric available here for one decoded image."""
    q: dict[str, float | None] = {"psnr": metrics.psnr(original, decoded), "ms_ssim": metrics.ms_ssim(original, decoded),
                                  "delta_e": metrics.block_delta_e(original, decoded)}
    if slow:
        q["butteraugli"] = metrics.butteraugli(original, decoded)
        q["ssimulacra"] = metrics.ssimulacra(original, decoded)
    return q


def evaluate_one(codec: Any, name: str, image: np.ndarray, frames: int, args: argparse.Namespace,
                 stream_path: Path | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Fit one codec to one budget, decode, measure; a BudgetError becomes a recorded failure.

    The chosen bitstream is kept at ``stream_path`` so a later ``--reuse`` run
    can redraw crops without repeating the rate search.
    """
    from gateway.ratecontrol import fit

    h, w = image.shape[:2]
    rec: dict[str, Any] = {"codec": name, "frames": frames, "budget_bytes": frames * args.frame_size}
    t0 = time.perf_counter()
    try:
        result = fit(codec, image, frames, frame_size=args.frame_size, parity=args.parity)
    except BudgetError as exc:
        rec.update(ok=False, error=str(exc), frames_needed=exc.frames_needed, fit_s=time.perf_counter() - t0)
        return rec, None
    except SatgwError as exc:  # a codec failing on one image is a result to report, not a reason to stop
        rec.update(ok=False, error=f"{type(exc).__name__}: {exc}", fit_s=time.perf_counter() - t0)
        return rec, None
    rec["fit_s"] = time.perf_counter() - t0
    # A single encode at the chosen knobs: what the sender pays once the search is cached.
    t0 = time.perf_counter()
    coded = bitstream.scaled_size(w, h, result.knobs.scale_code)
    small = image if coded == (w, h) else np.asarray(Image.fromarray(image).resize(coded, Image.Resampling.LANCZOS))
    codec.encode(codec.analyze(small), result.knobs, (w, h))
    rec["encode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        decoded = codec.decode(result.bitstream)
    except SatgwError as exc:
        rec.update(ok=False, error=f"decode failed: {type(exc).__name__}: {exc}")
        return rec, None
    rec["decode_s"] = time.perf_counter() - t0
    if decoded.shape != image.shape:
        rec.update(ok=False, error=f"decoded shape {decoded.shape}, expected {image.shape}")
        return rec, None
    if stream_path is not None:
        stream_path.parent.mkdir(parents=True, exist_ok=True)
        stream_path.write_bytes(result.bitstream)
    rec.update(ok=True, bytes=len(result.bitstream), bpp=8.0 * len(result.bitstream) / (w * h),
               rate=result.as_dict(), **quality(image, decoded, not args.no_slow_metrics))
    return rec, decoded


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def summarize(records: list[dict[str, Any]], codecs: list[str], frames: list[int]) -> list[dict[str, Any]]:
    """Means per (codec, budget) over the images where the codec met the budget."""
    rows = []
    for c in codecs:
        for f in frames:
            sel = [r for r in records if r["codec"] == c and r["frames"] == f]
            ok = [r for r in sel if r.get("ok")]
            row: dict[str, Any] = {"codec": c, "frames": f, "images": len(sel), "fit": len(ok)}
            for k in ("bytes", "bpp", *QUALITY_KEYS, "fit_s", "encode_s", "decode_s"):
                row[k] = _mean([r.get(k) for r in ok])
            rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_summary(rows: list[dict[str, Any]], bd: dict[str, dict[str, float | None]], reference: str,
                     meta: dict[str, Any]) -> str:
    """The summary table (and BD-rates) as markdown."""
    cols = ["codec", "frames", "fit", "bytes", "bpp", "psnr", "ms_ssim", "delta_e", "butteraugli", "ssimulacra",
            "fit_s", "encode_s", "decode_s"]
    lines = [f"# satgw evaluation", "",
             f"{meta['images']} images from `{meta['source']}`, frame size {meta['frame_size']} B, "
             f"parity {meta['parity']}; means over the images where the codec met the budget "
             f"(`fit` = how many). SSIMULACRA: {meta['ssimulacra']}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_fmt(r[c]) if c not in ("fit",) else f"{r['fit']}/{r['images']}" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## BD-rate against {reference} (negative = fewer bytes for the same quality)", "",
              "| codec | BD-rate MS-SSIM % | BD-rate PSNR % |", "|---|---|---|"]
    for c, v in bd.items():
        lines.append(f"| {c} | {_fmt(v['ms_ssim'], 3)} | {_fmt(v['psnr'], 3)} |")
    return "\n".join(lines) + "\n"


def plot_rd(rows: list[dict[str, Any]], codecs: list[str], out: Path) -> list[Path]:
    """bpp vs MS-SSIM and bpp vs PSNR, one curve per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label in (("ms_ssim", "MS-SSIM"), ("psnr", "PSNR (dB)")):
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        for c in codecs:
            pts = sorted((r["bpp"], r[key]) for r in rows if r["codec"] == c and r["bpp"] is not None and r[key] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.set_title(f"Rate–quality at fixed frame budgets ({label})")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out / f"rd_{key}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def side_by_side(original: np.ndarray, panels: list[tuple[str, np.ndarray, int]], size: int, path: Path) -> None:
    """original | panel ... as one PNG, a centred crop of each, label and bytes under each."""
    h, w = original.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    items = [("original", original, None)] + panels
    label_h = 28
    canvas = Image.new("RGB", (cw * len(items) + 4 * (len(items) - 1), ch + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img, nbytes) in enumerate(items):
        x = i * (cw + 4)
        canvas.paste(Image.fromarray(img[top:top + ch, left:left + cw]), (x, 0))
        text = label if nbytes is None else f"{label}: {nbytes} B"
        draw.text((x + 4, ch + 8), text, fill="black")
    canvas.save(path)


def _pick(codec: Any, image: np.ndarray, frames: int, args: argparse.Namespace) -> Any:
    """The codec that encodes ``image`` in ``frames`` frames: ``codec`` itself, or the rung of a model ladder
    that the sender would pick (its records then carry that rung's own key, so ``--reuse`` keeps a measurement
    exactly when the same model would make it again)."""
    from gateway.ratecontrol import Budget
    from gateway.ratecontrol.ladder import LadderModels

    if not isinstance(codec, LadderModels):
        return codec
    return codec.for_budget(Budget(frames, args.frame_size, parity=args.parity), image.shape[1], image.shape[0])


def codec_key(codec: Any) -> str:
    """What makes two runs' measurements of a codec comparable: its name, plus for CADC the model id, the
    colour-layer rows (config, not weights: the id does not cover them) and the refinement."""
    if codec.name != "cadc":
        return str(codec.name)
    steps = codec.refine_settings.iterations
    return (f"cadc:{codec.model_id:04x}/col{codec.color_policy.fingerprint}"
            + (f"+refine{steps}" if steps else ""))


def _previous(json_path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Records of an earlier run for one image, by (codec label, frames)."""
    try:
        return {(r["codec"], int(r["frames"])): r for r in json.loads(json_path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _redecode(codec: Any, stream: Path) -> np.ndarray | None:
    """Pixels of a kept bitstream (for crops), or None when it is gone or no longer decodes."""
    try:
        return codec.decode(stream.read_bytes())
    except (OSError, SatgwError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from gateway.codec.registry import make_codec

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    specs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    frames = sorted({int(f) for f in args.frames.split(",")})
    files = list_images(Path(args.images), args.limit)

    from gateway.ratecontrol.ladder import LadderModels, ladder_for

    codecs: dict[str, Any] = {}
    setup_errors: dict[str, str] = {}
    for spec in specs:
        label, sep, folder = spec.partition("=")
        label = label.strip() if sep else spec.lower()
        try:
            where = {"device": args.device, "precision": args.precision}
            if sep:
                codecs[label] = make_codec("cadc", bundle=folder.strip(), **where)
            else:
                # plain cadc: what the sender uses, the embedded model ladder (or --bundle alone)
                codecs[label] = LadderModels(ladder_for(args.bundle, None), **where) if label == "cadc" \
                    else make_codec(label)
        except SatgwError as exc:
            setup_errors[label] = str(exc)
            print(f"warning: codec {label} unavailable: {exc}", file=sys.stderr)
    for spec in args.refine:
        label, _, steps = spec.partition("=")
        if label.strip() not in codecs or codecs[label.strip()].name != "cadc" or not steps.strip().isdigit():
            raise SystemExit(f"eval: --refine {spec!r} must name a CADC codec of --codecs and a step count")
        from gateway.codec.cadc.refine import RefineSettings

        target = codecs[label.strip()]
        for model in target.models.values() if isinstance(target, LadderModels) else (target,):
            model.refine_settings = RefineSettings(iterations=int(steps))
    learned = [label for label, codec in codecs.items() if codec.name == "cadc"]

    records: list[dict[str, Any]] = []
    for i, path in enumerate(files):
        image = load_rgb(path)
        h, w = image.shape[:2]
        json_path = out / "images" / f"{path.stem}.json"
        old = _previous(json_path) if args.reuse else {}
        per_image: list[dict[str, Any]] = []
        decoded: dict[tuple[str, int], tuple[np.ndarray, int]] = {}
        for name, codecs_of in codecs.items():
            for f in frames:
                codec = _pick(codecs_of, image, f, args)
                key = codec_key(codec)
                stream = out / "streams" / f"{path.stem}_{name}_{f}f.bin"
                rec = old.get((name, f))
                reuse = rec is not None and rec.get("codec_key") == key
                if reuse:
                    # Metrics added since that run are measured on the kept bitstream's pixels.
                    stale = rec["ok"] and "delta_e" not in rec
                    pixels = rec["ok"] and (i < args.crops or stale)
                    dec = _redecode(codec, stream) if pixels else None
                    # A record copied without its bitstream is measured again where its pixels are needed.
                    reuse = not (pixels and dec is None)
                    if stale and dec is not None:
                        rec["delta_e"] = metrics.block_delta_e(image, dec)
                    how = "reused"
                if not reuse:
                    rec, dec = evaluate_one(codec, name, image, f, args, stream)
                    rec.update(image=path.name, width=w, height=h, codec_key=key)
                    how = "measured"
                per_image.append(rec)
                if dec is not None:
                    decoded[(name, f)] = (dec, rec["bytes"])
                if rec["ok"]:
                    status = f"{rec['bytes']} B psnr {rec['psnr']:.2f} ms-ssim {rec['ms_ssim']:.4f}"
                elif "frames_needed" in rec:
                    status = f"does not fit (needs {rec['frames_needed']} frames)"
                else:
                    status = f"failed: {rec['error']}"
                print(f"[{i + 1}/{len(files)}] {path.name} {name} {f} frames ({how}): {status}", flush=True)
        kept = [r for r in old.values() if (r["codec"], r["frames"]) not in {(x["codec"], x["frames"]) for x in per_image}]
        json_path.write_text(json.dumps(per_image + kept, indent=1))
        records.extend(per_image)
        if i < args.crops:
            for f in frames:
                panels: list[tuple[str, np.ndarray, int]] = [
                    (label, *decoded[(label, f)]) for label in learned if (label, f) in decoded]
                classical = [r for r in per_image if r["frames"] == f and r["codec"] not in learned and r["ok"]
                             and (r["codec"], f) in decoded]
                if classical:
                    best = max(classical, key=lambda r: r["ms_ssim"])
                    panels.append((best["codec"], *decoded[(best["codec"], f)]))
                if panels:
                    side_by_side(image, panels, args.crop_size, out / "crops" / f"{path.stem}_{f}f.png")

    names = list(codecs)
    rows = summarize(records, names, frames)
    bd = metrics.mean_bd_rates(records, names, args.reference) if args.reference in names else {}
    meta = {"images": len(files), "source": str(args.images), "frame_size": args.frame_size, "parity": args.parity,
            "frames": frames, "codecs": names, "unavailable": setup_errors, "reference": args.reference,
            "ssimulacra": metrics.ssimulacra_version() if not args.no_slow_metrics else "skipped",
            "bundle": args.bundle, "device": args.device, "precision": args.precision,
            "ladders": {label: c.ladder.describe() for label, c in codecs.items() if isinstance(c, LadderModels)}}
    (out / "summary.json").write_text(json.dumps({"meta": meta, "rows": rows, "bd_rate": bd}, indent=1))
    md = markdown_summary(rows, bd, args.reference, meta)
    (out / "summary.md").write_text(md)
    plot_rd(rows, names, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
