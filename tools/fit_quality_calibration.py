#!/usr/bin/env python3
"""Fit a CADC bundle's quality calibration: sender-side features -> the ground's MS-SSIM and PSNR.

For training pictures (never Kodak: it is for evaluation only) at several
frame budgets, this encodes each picture as the sender does (the encoder-only
codec and the rate controller), computes the sender's features (x̂_aux's
quality, bits per pixel, λ, Δ, picture statistics:
:meth:`gateway.codec.cadc.quality_predictor.QualityPredictor.features`), and
decodes the very bitstream with the whole model, as the ground does, for the
targets.  A part of the pictures is held out: the ridge regression is fitted
on the rest, its error on the held-out pictures is stored in the file, and
the file is written into the bundle (``quality_calibration.json``, listed in
the manifest; the model id does not change).

Refit whenever the model is retrained (a calibration of other weights is
ignored by the sender, which then falls back to x̂_aux's own quality)::

    python tools/fit_quality_calibration.py --bundle gateway/bundles/cadc-tiny

Samples are cached in ``--cache`` (JSON lines), so a rerun with other terms
costs no decodes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_IMAGES = ("/work/shared/data/bsds500/train", "/work/shared/data/urban100")
#: Candidate term sets of the regression; the one with the lowest grouped cross-validated MS-SSIM error on
#: the training pictures (never the held-out ones) is fitted, unless --terms names the terms.
TERM_SETS: dict[str, tuple[str, ...]] = {
    "aux": ("aux_ms_ssim", "aux_psnr", "log2_bpp"),
    "aux+knobs": ("aux_ms_ssim", "aux_psnr", "log2_bpp", "log_lam", "delta", "scale"),
    "all": ("aux_ms_ssim", "aux_psnr", "log2_bpp", "log_lam", "delta", "scale", "log_gradient", "colourfulness"),
    "all+products": ("aux_ms_ssim", "aux_psnr", "log2_bpp", "log_lam", "delta", "scale", "log_gradient",
                     "colourfulness", "aux_ms_ssim*aux_ms_ssim", "aux_ms_ssim*log2_bpp", "aux_psnr*log2_bpp"),
}
def collect(bundle: str, images: list[Path], budgets: list[int], frame_size: int, cache: Path | None) -> list[dict]:
    """One sample per (picture, budget): the sender's features and the ground's measured quality."""
    import torch

    from gateway.codec.image_io import read_rgb
    from gateway.codec.image_metrics import quality
    from gateway.codec.registry import make_codec
    from gateway.errors import BudgetError
    from gateway.ratecontrol import Budget, fit

    torch.set_num_threads(1)
    sender = make_codec("cadc", bundle=bundle, encoder_only=True)
    ground = make_codec("cadc", bundle=bundle, device="cpu")
    ground.decoder_threads = 1  # the other core stays free (a training run, the sender)
    model_id = f"{sender.model_id:04x}"
    rows = sender.color_policy.fingerprint  # the ground's quality depends on the colour rows too
    done: dict[tuple[str, int], dict] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text().splitlines():
            s = json.loads(line)
            if s.get("model_id") == model_id and s.get("color_rows") == rows and s.get("frame_size") == frame_size:
                done[(s["image"], s["frames"])] = s
    predictor = sender.quality_predictor()
    samples = []
    t_start = time.monotonic()
    for n, path in enumerate(images, 1):
        image = None
        for frames in budgets:
            key = (str(path), frames)
            if key in done:
                samples.append(done[key])
                continue
            if image is None:
                image = read_rgb(path.read_bytes())
            try:
                result = fit(sender, image, Budget(frames, frame_size), label=path.name)
            except BudgetError as e:
                print(f"  {path.name} @ {frames}: skipped ({e})", flush=True)
                continue
            t0 = time.perf_counter()
            feats = predictor.features(image, result.bitstream)
            t1 = time.perf_counter()
            truth = quality(image, ground.decode(result.bitstream))
            sample = {"image": str(path), "frames": frames, "frame_size": frame_size, "model_id": model_id,
                      "color_rows": rows,
                      "features": feats, "truth": truth, "bytes": result.bytes,
                      "feature_s": round(t1 - t0, 4), "decode_s": round(time.perf_counter() - t1, 4)}
            samples.append(sample)
            if cache is not None:
                with cache.open("a") as fh:
                    fh.write(json.dumps(sample) + "\n")
        print(f"  [{n}/{len(images)}] {path.name}  ({time.monotonic() - t_start:.0f} s)", flush=True)
    return samples


def cv_error(terms: tuple[str, ...], rows: list[dict], target: str) -> float:
    """Grouped 5-fold cross-validated MAE of ``target`` with ``terms`` on ``rows`` (folds keep pictures whole)."""
    from gateway.codec.cadc.quality_calibration import QualityCalibration, _folds

    groups = [s["image"] for s in rows]
    errs = []
    for test in _folds(groups, 5):
        train = [s for s, t in zip(rows, test) if not t]
        held = [s for s, t in zip(rows, test) if t]
        cal = QualityCalibration.fit(0, terms, [s["features"] for s in train], {target: [s["truth"][target]
                                     for s in train]}, [s["image"] for s in train])
        pred = cal.predict_many([s["features"] for s in held])[target]
        errs += list(np.abs(pred - np.array([s["truth"][target] for s in held])))
    return float(np.mean(errs))


def errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, mean signed error and Spearman's rank correlation of predictions against the truth."""
    from gateway.codec.cadc.quality_calibration import spearman

    diff = pred - truth
    return {"mae": float(np.abs(diff).mean()), "rmse": float(np.sqrt((diff**2).mean())), "bias": float(diff.mean()),
            "spearman": spearman(pred, truth), "n": int(len(truth))}


def held_out_report(cal: Any, test: list[dict], budgets: list[int]) -> dict[str, Any]:
    """The held-out error of ``cal`` per target, overall and per budget, beside the fallback's (x̂_aux's own)."""
    pred = cal.predict_many([s["features"] for s in test])
    out: dict[str, Any] = {}
    for target in cal.targets:
        truth = np.array([s["truth"][target] for s in test])
        aux = np.array([s["features"][f"aux_{target}"] for s in test])
        entry = errors(pred[target], truth)
        entry["fallback"] = errors(aux, truth)
        entry["per_budget"] = {}
        for frames in budgets:
            idx = [i for i, s in enumerate(test) if s["frames"] == frames]
            if idx:
                entry["per_budget"][str(frames)] = errors(pred[target][idx], truth[idx])
        out[target] = entry
    return out


def rounded(obj: Any) -> Any:
    """``obj`` with floats rounded to 5 significant places (a readable file)."""
    if isinstance(obj, float):
        return float(f"{obj:.5g}")
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(ROOT / "gateway" / "bundles" / "cadc-tiny"),
                    help="CADC bundle folder to calibrate (default: the embedded cadc-tiny); the file is written there")
    ap.add_argument("--images", action="append", help="folder of training pictures; repeat for several "
                    f"(default: {', '.join(DEFAULT_IMAGES)}); never Kodak")
    ap.add_argument("--limit", type=int, default=40, help="pictures in all, drawn round-robin from the folders")
    ap.add_argument("--budgets", default="1,2,4,8", help="frame budgets (default 1,2,4,8)")
    ap.add_argument("--frame-size", type=int, default=450)
    ap.add_argument("--held-out", type=float, default=0.25, help="share of the pictures held out (default 0.25)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--terms", help="comma-separated regression terms (default: the best of the candidate sets by "
                    "cross-validation on the training pictures)")
    ap.add_argument("--cache", type=Path, help="JSON-lines file of samples, reused and extended across runs")
    ap.add_argument("--dry-run", action="store_true", help="fit and report, write nothing into the bundle")
    a = ap.parse_args(argv)

    from gateway.codec.cadc.bundle import bundle_model_id, model_id_of
    from gateway.codec.cadc.quality_calibration import QualityCalibration, write_calibration

    budgets = [int(b) for b in a.budgets.split(",")]
    folders = a.images or list(DEFAULT_IMAGES)
    from gateway.errors import ConfigError
    from gateway.training.data import pick_images

    try:
        images = pick_images(folders, a.limit, a.seed)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"calibrating {a.bundle} on {len(images)} pictures x budgets {budgets} ({a.frame_size} B frames)", flush=True)
    t0 = time.monotonic()
    samples = collect(a.bundle, images, budgets, a.frame_size, a.cache)
    if len(samples) < 8:
        print(f"only {len(samples)} samples: too few to fit", file=sys.stderr)
        return 1
    names = sorted({s["image"] for s in samples})
    random.Random(a.seed).shuffle(names)
    held = set(names[: max(1, round(len(names) * a.held_out))])
    train = [s for s in samples if s["image"] not in held]
    test = [s for s in samples if s["image"] in held]
    model_id = bundle_model_id(a.bundle)
    if a.terms:
        terms, selection = tuple(a.terms.split(",")), {"given": a.terms}
    else:
        selection = {name: cv_error(ts, train, "ms_ssim") for name, ts in TERM_SETS.items()}
        best = min(selection, key=selection.get)
        terms = TERM_SETS[best]
        print("term sets, cross-validated MS-SSIM MAE on the training pictures: "
              + ", ".join(f"{k} {v:.4g}" for k, v in selection.items()) + f"; fitting '{best}'")
    cal = QualityCalibration.fit(model_id, terms, [s["features"] for s in train],
                                 {t: [s["truth"][t] for s in train] for t in ("ms_ssim", "psnr")},
                                 [s["image"] for s in train])
    report = held_out_report(cal, test, budgets)
    provenance = {
        "tool": "tools/fit_quality_calibration.py",
        "command": "python tools/fit_quality_calibration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image_folders": folders,
        "pictures": len(names), "held_out_pictures": len(held),
        "samples": len(train), "held_out_samples": len(test),
        "budgets": budgets, "frame_size": a.frame_size,
        "term_selection_cv_mae": selection,
        "shipped_fit": "fitted on the non-held-out pictures only: the held-out errors are this model's",
        "feature_s_median": float(np.median([s["feature_s"] for s in samples])),
        "seconds": round(time.monotonic() - t0, 1),
    }
    cal = QualityCalibration(cal.model_id, cal.terms, cal.center, cal.scale, cal.targets,
                             rounded(report), rounded(provenance))
    def rho(e: dict[str, Any]) -> str:
        return "-" if e["spearman"] is None else f"{e['spearman']:.3f}"

    for target, entry in report.items():
        fb = entry["fallback"]
        print(f"{target}: held-out MAE {entry['mae']:.4g} (RMSE {entry['rmse']:.4g}, bias {entry['bias']:+.3g}, "
              f"Spearman {rho(entry)}); fallback x̂_aux MAE {fb['mae']:.4g} (bias {fb['bias']:+.3g}, "
              f"Spearman {rho(fb)}); ridge alpha {cal.targets[target].alpha:g}")
        for frames, e in entry["per_budget"].items():
            print(f"    {frames} frames: MAE {e['mae']:.4g}, Spearman {rho(e)} (n={e['n']})")
    if a.dry_run:
        print("dry run: nothing written")
        return 0
    before = model_id_of(a.bundle)
    path = write_calibration(a.bundle, cal)
    assert model_id_of(a.bundle) == before, "the calibration file must not change the model id"
    print(f"wrote {path} (model {model_id:04x}, id unchanged) in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
