#!/usr/bin/env python3
"""Benchmark ``codec: auto`` against every single codec: quality per budget, prediction error, picks, time.

For every picture of a folder and every frame budget, this encodes the
picture with each candidate codec alone (the rate controller, as a job
naming that codec would) and with ``auto`` (as the sender does: CADC
encoder-only, its quality predicted from the bundle's calibration), decodes
every bitstream as the ground does (CADC: the whole model) and measures
MS-SSIM and PSNR against the original.  It prints, per budget:

* mean MS-SSIM (and PSNR) of each single codec, of ``auto``, of ``auto``
  under the fallback rule (CADC ranked by x̂_aux's own quality: the same
  candidates re-ranked, no calibration), and of the oracle (the best codec
  per picture, known only after decoding);
* the learned codec's prediction error: MAE and Spearman's rank correlation
  of the predicted against the ground's MS-SSIM (and PSNR);
* how often ``auto`` picked the real winner, and its mean regret;
* the time spent choosing per picture, and the extra over encoding with the
  chosen codec alone, in wall and in CPU seconds (CPU time is the steadier
  figure on a shared host); how many candidates were dropped after their probe.

Then a ``BENCH_JSON`` line with every number.  Kodak is for evaluation: run
it there, never tune on it.  Example::

    python tools/bench_auto.py --images /work/shared/data/kodak --limit 8 --frames 1,2,4,8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="/work/shared/data/kodak", help="folder of pictures (default: Kodak)")
    ap.add_argument("--limit", type=int, default=8, help="first N pictures (default 8)")
    ap.add_argument("--frames", default="1,2,4,8", help="frame budgets (default 1,2,4,8)")
    ap.add_argument("--frame-size", type=int, default=450)
    ap.add_argument("--bundle", help="CADC bundle (default: the embedded cadc-tiny)")
    ap.add_argument("--candidates", help="comma-separated codecs (default: the sender's default list)")
    ap.add_argument("--metric", default="ms_ssim")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, help="also write the per-picture rows here (JSON)")
    a = ap.parse_args(argv)

    import torch

    from gateway.codec.cadc.quality_calibration import spearman
    from gateway.codec.image_io import read_rgb
    from gateway.codec.image_metrics import quality
    from gateway.codec.registry import available_codecs, make_codec
    from gateway.errors import BudgetError
    from gateway.ratecontrol import Budget, fit
    from gateway.ratecontrol.auto import AutoSettings, check_candidates, choose_codec, default_candidates

    torch.set_num_threads(a.threads)
    names = check_candidates(a.candidates.split(","), available_codecs()) if a.candidates else default_candidates()
    settings = AutoSettings(names, a.metric)
    budgets = [int(f) for f in a.frames.split(",")]
    encoders = {n: make_codec(n, bundle=a.bundle, encoder_only=True) for n in names}
    ground = make_codec("cadc", bundle=a.bundle, device="cpu") if "cadc" in names else None
    if ground is not None:
        ground.decoder_threads = a.threads
    notes: list[str] = []
    files = sorted(p for p in Path(a.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: a.limit]
    truth_cache: dict[str, dict[str, float]] = {}

    def truth(codec_name: str, data: bytes, image: np.ndarray) -> dict[str, float]:
        key = hashlib.blake2b(data, digest_size=16).hexdigest()
        if key not in truth_cache:
            decoder = ground if codec_name == "cadc" else encoders[codec_name]
            truth_cache[key] = quality(image, decoder.decode(data))
        return truth_cache[key]

    rows: list[dict[str, Any]] = []
    print(f"bench_auto: {len(files)} pictures x budgets {budgets}, candidates {', '.join(names)}, "
          f"metric {a.metric}", flush=True)
    for path in files:
        image = read_rgb(path.read_bytes())
        for frames in budgets:
            budget = Budget(frames, a.frame_size)
            row: dict[str, Any] = {"image": path.name, "frames": frames, "single": {}}
            for n, codec in encoders.items():
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    res = fit(codec, image, budget, label=path.name)
                except BudgetError:
                    row["single"][n] = None
                    continue
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                row["single"][n] = {**truth(n, res.bitstream, image), "seconds": seconds, "cpu_s": cpu,
                                    "bytes": res.bytes}
            t0, c0 = time.perf_counter(), time.process_time()
            choice = choose_codec(list(encoders.values()), image, budget, settings, label=path.name,
                                  on_fallback=lambda c, note: notes.append(note))
            auto_s, auto_cpu = time.perf_counter() - t0, time.process_time() - c0
            reps = {c.codec: c for c in choice.candidates}
            row["auto"] = {"codec": choice.codec, "seconds": auto_s, "cpu_s": auto_cpu,
                           **truth(choice.codec, choice.result.bitstream, image),
                           "dropped": [c.codec for c in choice.candidates if c.state == "dropped"],
                           "candidates": [c.as_dict() for c in choice.candidates]}
            cadc = reps.get("cadc")
            if cadc is not None and cadc.result is not None:
                row["cadc_predicted"] = dict(cadc.quality)
                row["cadc_source"] = cadc.source
                row["cadc_truth"] = truth("cadc", cadc.result.bitstream, image)
                feats = encoders["cadc"].quality_predictor().features(image, cadc.result.bitstream)
                row["cadc_aux"] = {"ms_ssim": feats["aux_ms_ssim"], "psnr": feats["aux_psnr"]}
                # The fallback rule: the same candidates, CADC valued at x̂_aux's own quality.
                values = {c.codec: c.quality.get(a.metric) for c in choice.candidates if c.quality and c.result}
                values["cadc"] = row["cadc_aux"][a.metric]
                fb = max(values, key=lambda k: (values[k], -names.index(k)))
                fb_bits = reps[fb].result.bitstream
                row["fallback"] = {"codec": fb, **truth(fb, fb_bits, image)}
            known = {n: v[a.metric] for n, v in row["single"].items() if v is not None}
            row["winner"] = max(known, key=known.get)
            row["oracle"] = known[row["winner"]]
            rows.append(row)
            print(f"  {path.name} @ {frames}: auto -> {choice.codec} ({row['auto'][a.metric]:.4f}; winner "
                  f"{row['winner']} {row['oracle']:.4f}) in {auto_s:.2f} s"
                  + (f"; cadc predicted {row['cadc_predicted'][a.metric]:.4f} vs {row['cadc_truth'][a.metric]:.4f}"
                     if "cadc_predicted" in row else ""), flush=True)

    summary: dict[str, Any] = {"images": [p.name for p in files], "candidates": list(names), "metric": a.metric,
                               "budgets": {}}
    print()
    header = f"{'frames':>6} " + " ".join(f"{n:>7}" for n in names) + f" {'auto':>7} {'fallbk':>7} {'oracle':>7}" \
        + f" {'picks':>6} {'regret':>7} {'MAE':>7} {'rho':>6} {'MAEaux':>7} {'auto s':>7} {'extra s':>7}" \
        + f" {'cpu s':>6} {'+cpu s':>6} {'drop':>5}"
    print(f"mean {a.metric} per budget")
    print(header)
    for frames in budgets:
        sel = [r for r in rows if r["frames"] == frames]
        singles = {n: mean([r["single"][n][a.metric] for r in sel if r["single"].get(n)]) for n in names}
        fits = {n: sum(1 for r in sel if r["single"].get(n)) for n in names}
        auto_m = mean([r["auto"][a.metric] for r in sel])
        fb_m = mean([r["fallback"][a.metric] for r in sel if "fallback" in r])
        oracle = mean([r["oracle"] for r in sel])
        picks = sum(r["auto"]["codec"] == r["winner"] for r in sel) / max(1, len(sel))
        regret = mean([r["oracle"] - r["auto"][a.metric] for r in sel])
        pred = [r for r in sel if "cadc_predicted" in r]
        entry: dict[str, Any] = {"single": singles, "fits": fits, "auto": auto_m, "fallback": fb_m, "oracle": oracle,
                                 "winner_rate": picks, "regret": regret,
                                 "auto_s_median": statistics.median([r["auto"]["seconds"] for r in sel]),
                                 "extra_s_median": statistics.median(
                                     [r["auto"]["seconds"] - (r["single"][r["auto"]["codec"]] or {}).get("seconds", 0)
                                      for r in sel]),
                                 "auto_cpu_s_median": statistics.median([r["auto"]["cpu_s"] for r in sel]),
                                 "extra_cpu_s_median": statistics.median(
                                     [r["auto"]["cpu_s"] - (r["single"][r["auto"]["codec"]] or {}).get("cpu_s", 0)
                                      for r in sel]),
                                 "dropped": sum(len(r["auto"]["dropped"]) for r in sel) / max(1, len(sel))}
        for target in ("ms_ssim", "psnr"):
            p = [r["cadc_predicted"][target] for r in pred]
            t = [r["cadc_truth"][target] for r in pred]
            x = [r["cadc_aux"][target] for r in pred]
            entry[f"pred_{target}"] = {"mae": mean([abs(u - v) for u, v in zip(p, t)]), "spearman": spearman(p, t),
                                       "aux_mae": mean([abs(u - v) for u, v in zip(x, t)]), "n": len(p)}
        summary["budgets"][str(frames)] = entry
        pm = entry[f"pred_{a.metric}"]
        rho = "-" if pm["spearman"] is None else f"{pm['spearman']:.3f}"
        print(f"{frames:>6} " + " ".join(f"{singles[n]:>7.4f}" for n in names)
              + f" {auto_m:>7.4f} {fb_m:>7.4f} {oracle:>7.4f} {picks:>6.2f} {regret:>7.4f} {pm['mae']:>7.4f}"
              + f" {rho:>6} {pm['aux_mae']:>7.4f} {entry['auto_s_median']:>7.2f} {entry['extra_s_median']:>7.2f}"
              + f" {entry['auto_cpu_s_median']:>6.2f} {entry['extra_cpu_s_median']:>6.2f} {entry['dropped']:>5.2f}")
    all_auto = [r["auto"]["seconds"] for r in rows]
    summary["auto_s_mean"] = mean(all_auto)
    summary["cadc_prediction_sources"] = sorted({r.get("cadc_source") for r in rows if r.get("cadc_source")})
    if notes:
        summary["notes"] = sorted(set(notes))
        print("notes: " + "; ".join(sorted(set(notes))))
    print("columns: single codecs, auto, auto under the fallback rule, the oracle; picks = share of pictures where "
          "auto chose the real winner; MAE/rho: CADC's predicted vs ground quality (MAEaux: x̂_aux alone); "
          "time: median wall seconds choosing per picture, and over encoding with the chosen codec alone (cpu: the "
          "same in CPU seconds); drop: "
          "candidates dropped per picture")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    print("BENCH_JSON " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
