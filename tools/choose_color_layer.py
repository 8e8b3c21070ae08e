#!/usr/bin/env python3
"""Choose a CADC bundle's colour-layer rows (``codec.color_layer``) on training pictures.

The rows tie the colour layer (docs/bitstream.md format 3) to λ: from each
row's ``min_lam`` up to the previous row's, the sender adds that layer.
Which layer pays depends on the model: a model whose latent carries more
colour wants less of it, one picked at higher λ for the same budget wants
it at higher λ.  This tool measures it instead of guessing::

    python tools/choose_color_layer.py --bundle gateway/bundles/cadc-tiny-y16 --out /work/eval/color-y16

For each picture and frame budget it runs the rate controller once with no
layer (the *plain* pick, whose λ says which row the budget falls in) and
once per candidate layer with that layer always on, so every candidate is
judged at the same total size (latent + layer fit the same budget), then
decodes each with the whole model as the ground does.  Per band of the
plain λ it keeps the candidate with the best mean
``J = ΔMS-SSIM − weight·Δ(block ΔE)`` against the plain pick (none when no
candidate has J > 0), and prints the rows as YAML for the bundle's config,
with the bundle's current rows measured the same way beside them.

Never Kodak (evaluation only).  Measurements are cached in ``--out`` (JSON
lines per model id), so a rerun with other bands or weight costs nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_IMAGES = ("/work/shared/data/bsds500/train", "/work/shared/data/urban100")
#: Lower λ edges of the bands (the highest band is [first, ∞), the last (0, last)): cadc-tiny's rows'.
DEFAULT_BANDS = (50.0, 20.0, 8.0, 4.0, 1.5, 0.8)
#: The key of the plain pick (no colour layer) and of the bundle's own rows in the measurements.
PLAIN, CURRENT = "none", "current"


def candidate_grid() -> list[dict[str, float]]:
    """Colour layers tried: chroma only (coarse to fine), then luma and chroma at one cell side, at steps 4 and 3."""
    grid: list[dict[str, float]] = [{"chroma_cell": c} for c in (128, 96, 64, 48, 32)]
    for cell in (64, 48, 32, 24, 16):
        grid.append({"luma_cell": cell, "chroma_cell": cell})
        grid.append({"luma_cell": cell, "chroma_cell": cell, "luma_step": 3.0, "chroma_step": 3.0})
    grid += [{"luma_cell": 48, "chroma_cell": 64}, {"luma_cell": 32, "chroma_cell": 48},
             {"luma_cell": 24, "chroma_cell": 32, "luma_step": 3.0, "chroma_step": 3.0}]
    return grid


def settings_key(settings: dict[str, float]) -> str:
    """A short stable name of a candidate, e.g. ``L32C48s3``."""
    from gateway.codec.cadc.color_layer import ColorLayerSettings

    s = ColorLayerSettings(**settings)
    if s.empty:
        return PLAIN
    key = (f"L{s.luma_cell}" if s.luma_cell else "") + (f"C{s.chroma_cell}" if s.chroma_cell else "")
    steps = {s.luma_step if s.luma_cell else None, s.chroma_step if s.chroma_cell else None} - {None}
    return key + ("" if steps == {4.0} else "s" + "/".join(f"{v:g}" for v in sorted(steps)))


def cells_per_megapixel(settings: dict[str, float]) -> float:
    """How fine a layer is: cell means sent per million pixels (the size grows with it)."""
    from gateway.codec.cadc.color_layer import ColorLayerSettings

    return sum(1e6 / cell ** 2 for _, cell, _ in ColorLayerSettings(**settings).planes())


def load_picture(path: Path, max_side: int | None) -> Any:
    """An RGB uint8 picture, reduced (Lanczos) so its longer side is at most ``max_side``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side and max(im.size) > max_side:
            k = max_side / max(im.size)
            im = im.resize((max(8, round(im.width * k)), max(8, round(im.height * k))), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def measure(bundle: str, images: list[Path], frames: list[int], frame_size: int, max_side: int | None,
            candidates: list[dict[str, float]], cache: Path, min_bpp: float = 0.0,
            max_bpp: float = math.inf) -> list[dict[str, Any]]:
    """One record per (picture, budget, layer): the plain pick, the bundle's own rows, each candidate.

    Budgets outside [``min_bpp``, ``max_bpp``) bits per pixel of the picture are skipped (a ladder rung
    never codes them).
    """
    from gateway.codec.cadc.color_layer import ColorLayerPolicy, ColorLayerRule, ColorLayerSettings
    from gateway.codec.image_metrics import quality
    from gateway.codec.registry import make_codec
    from gateway.eval.metrics import block_delta_e
    from gateway.errors import BudgetError
    from gateway.ratecontrol import Budget, fit

    codec = make_codec("cadc", bundle=bundle, device="cpu")
    own = codec.color_policy
    model_id = f"{codec.model_id:04x}"
    done: dict[tuple[str, int, str], dict[str, Any]] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r["model_id"] == model_id and r["frame_size"] == frame_size and r.get("max_side") == max_side \
                    and (r["layer"] != CURRENT or r.get("rows") == own.fingerprint):  # the bundle's rows may change
                done[(r["image"], r["frames"], r["layer"])] = r
    policies = [(PLAIN, ColorLayerPolicy([]), {}), (CURRENT, own, {})]
    policies += [(settings_key(c), ColorLayerPolicy([ColorLayerRule(0.0, ColorLayerSettings(**c))]), c)
                 for c in candidates]
    records: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for n, path in enumerate(images, 1):
        picture = None
        for f in frames:
            if picture is None:
                picture = load_picture(path, max_side)
            if not min_bpp <= 8.0 * f * frame_size / (picture.shape[0] * picture.shape[1]) < max_bpp:
                continue
            for key, policy, settings in policies:
                if (str(path), f, key) in done:
                    records.append(done[(str(path), f, key)])
                    continue
                codec.color_policy = policy
                try:
                    result = fit(codec, picture, Budget(f, frame_size), label=path.name)
                except BudgetError:
                    if key == PLAIN:
                        break  # the plain pick does not fit: no layer can
                    continue
                decoded = codec.decode(result.bitstream)
                h, w = picture.shape[:2]
                rec = {"image": str(path), "frames": f, "layer": key, "settings": settings, "model_id": model_id,
                       "frame_size": frame_size, "max_side": max_side, "rows": own.fingerprint, "bytes": result.bytes,
                       "bpp": 8.0 * result.bytes / (w * h), "lam": codec.lam(result.knobs.lam_code),
                       **quality(picture, decoded), "delta_e": block_delta_e(picture, decoded)}
                records.append(rec)
                with cache.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        codec.color_policy = own
        print(f"  [{n}/{len(images)}] {path.name}  ({time.monotonic() - t_start:.0f} s)", flush=True)
    return records


def band_of(lam: float, bands: tuple[float, ...]) -> int:
    """Index of the band holding ``lam``: 0 for ``lam >= bands[0]``, len(bands) below the last edge."""
    for i, edge in enumerate(bands):
        if lam >= edge:
            return i
    return len(bands)


def band_label(i: int, bands: tuple[float, ...]) -> str:
    """``"≥ 50"``, ``"20–50"``, …, ``"< 0.8"``."""
    if i == 0:
        return f"≥ {bands[0]:g}"
    if i == len(bands):
        return f"< {bands[-1]:g}"
    return f"{bands[i]:g}–{bands[i - 1]:g}"


def choose(records: Iterable[dict[str, Any]], bands: tuple[float, ...], weight: float) -> list[dict[str, Any]]:
    """Per band of the plain pick's λ: every layer's mean change against the plain pick, and the one chosen.

    A layer is scored only on the (picture, budget) pairs where both it and
    the plain pick were measured; the chosen one has the highest mean J
    (ties: fewer bytes), and none is chosen when no layer's J is above 0.
    """
    by_pair: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in records:
        by_pair.setdefault((r["image"], r["frames"]), {})[r["layer"]] = r
    bands_out = []
    for i in range(len(bands) + 1):
        pairs = [p for p in by_pair.values() if PLAIN in p and band_of(p[PLAIN]["lam"], bands) == i]
        layers: dict[str, dict[str, Any]] = {}
        names = sorted({k for p in pairs for k in p if k != PLAIN})
        for name in names:
            both = [(p[PLAIN], p[name]) for p in pairs if name in p]
            d_ms = sum(b["ms_ssim"] - a["ms_ssim"] for a, b in both) / len(both)
            d_de = sum(b["delta_e"] - a["delta_e"] for a, b in both) / len(both)
            d_psnr = sum(b["psnr"] - a["psnr"] for a, b in both) / len(both)
            layers[name] = {"n": len(both), "d_ms_ssim": d_ms, "d_delta_e": d_de, "d_psnr": d_psnr,
                            "j": d_ms - weight * d_de, "settings": next(b["settings"] for _, b in both),
                            "lam": sum(b["lam"] for _, b in both) / len(both)}
        scored = {k: v for k, v in layers.items() if k != CURRENT}
        best = max(scored, key=lambda k: (scored[k]["j"], -cells_per_megapixel(scored[k]["settings"])),
                   default=None)
        if best is not None and scored[best]["j"] <= 0:
            best = None
        bands_out.append({"band": band_label(i, bands), "min_lam": bands[i] if i < len(bands) else 0.0,
                          "pairs": len(pairs), "layers": layers, "chosen": best,
                          "settings": layers[best]["settings"] if best else {}})
    return bands_out


def rows_of(chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``codec.color_layer`` rows (highest λ first), neighbouring bands with one layer merged into one row."""
    rows: list[dict[str, Any]] = []
    for band in chosen:
        if band["pairs"] == 0:
            continue  # nothing measured there: the row above goes on
        if rows and rows[-1]["settings"] == band["settings"]:
            rows[-1]["min_lam"] = band["min_lam"]
        else:
            rows.append({"min_lam": band["min_lam"], "settings": band["settings"]})
    return [{"min_lam": r["min_lam"], **r["settings"]} for r in rows]


def monotone_problems(rows: list[dict[str, Any]]) -> list[str]:
    """Rows whose layer is finer than a lower-λ row's (the rate search assumes size grows as λ falls)."""
    out = []
    for hi, lo in zip(rows, rows[1:]):
        a = cells_per_megapixel({k: v for k, v in hi.items() if k != "min_lam"})
        b = cells_per_megapixel({k: v for k, v in lo.items() if k != "min_lam"})
        if a > b:
            out.append(f"row from λ {hi['min_lam']:g} sends {a:.0f} cells/MP, more than the row below it ({b:.0f})")
    return out


def report(chosen: list[dict[str, Any]], weight: float) -> str:
    """The per-band table (chosen layer and the bundle's current rows against the plain pick)."""
    lines = [f"J = ΔMS-SSIM − {weight:g}·Δ(block ΔE), means over the (picture, budget) pairs whose plain pick "
             "lies in the band", "",
             "| λ of the plain pick | pairs | chosen | ΔMS-SSIM | Δ block ΔE | ΔPSNR dB | J | current rows' J |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for b in chosen:
        cur = b["layers"].get(CURRENT)
        cur_j = f"{cur['j']:+.4f}" if cur else "–"
        c = b["layers"].get(b["chosen"]) if b["chosen"] else None
        if c:
            lines.append(f"| {b['band']} | {b['pairs']} | {b['chosen']} | {c['d_ms_ssim']:+.4f} | {c['d_delta_e']:+.2f} "
                         f"| {c['d_psnr']:+.2f} | {c['j']:+.4f} | {cur_j} |")
        else:
            lines.append(f"| {b['band']} | {b['pairs']} | none | 0 | 0 | 0 | 0 | {cur_j} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="CADC bundle folder")
    ap.add_argument("--images", nargs="+", help=f"training picture folders (default: {', '.join(DEFAULT_IMAGES)})")
    ap.add_argument("--limit", type=int, default=16, help="pictures, drawn round-robin from the folders")
    ap.add_argument("--seed", type=int, default=5, help="seed of the draw")
    ap.add_argument("--max-side", type=int, default=768, help="reduce larger pictures to this longer side (0: never)")
    ap.add_argument("--frames", default="1,2,4,8", help="frame budgets")
    ap.add_argument("--frame-size", type=int, default=450)
    ap.add_argument("--min-bpp", type=float, default=0.0,
                    help="skip budgets below this many bits per pixel (a ladder rung's from_bpp: it never codes them)")
    ap.add_argument("--max-bpp", type=float, default=math.inf,
                    help="skip budgets from this many bits per pixel up (the next rung's from_bpp)")
    ap.add_argument("--bands", default=",".join(f"{b:g}" for b in DEFAULT_BANDS),
                    help="lower λ edges of the bands, highest first")
    ap.add_argument("--weight", type=float, default=0.005, help="MS-SSIM worth one unit of block ΔE")
    ap.add_argument("--candidates", help="JSON list of layer settings to try (default: the built-in grid)")
    ap.add_argument("--out", type=Path, required=True, help="folder for measurements.jsonl and choice.json")
    a = ap.parse_args(argv)

    from gateway.errors import SatgwError
    from gateway.training.data import pick_images

    bands = tuple(sorted((float(b) for b in a.bands.split(",")), reverse=True))
    try:
        candidates = json.loads(a.candidates) if a.candidates else candidate_grid()
        for c in candidates:
            settings_key(c)  # malformed settings fail here, before any picture is coded
        images = pick_images(a.images or list(DEFAULT_IMAGES), a.limit, a.seed)
        a.out.mkdir(parents=True, exist_ok=True)
        frames = [int(f) for f in a.frames.split(",")]
        print(f"{a.bundle}: {len(images)} pictures x {frames} frames x {len(candidates) + 2} layers", flush=True)
        records = measure(a.bundle, images, frames, a.frame_size, a.max_side or None, candidates,
                          a.out / "measurements.jsonl", a.min_bpp, a.max_bpp)
    except (SatgwError, TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = choose(records, bands, a.weight)
    rows = rows_of(chosen)
    print(report(chosen, a.weight))
    print("\ncodec.color_layer rows:")
    import yaml

    print(yaml.safe_dump({"color_layer": rows}, sort_keys=False, default_flow_style=False))
    for problem in monotone_problems(rows):
        print(f"warning: {problem}")
    (a.out / "choice.json").write_text(json.dumps({"bundle": a.bundle, "weight": a.weight, "bands": bands,
                                                   "images": [str(p) for p in images], "frames": frames,
                                                   "per_band": chosen, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
