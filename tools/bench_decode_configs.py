#!/usr/bin/env python
"""Compare CPU decode time of model configs (random-init bundles) on a Kodak image, as ratios to the first.

    python tools/bench_decode_configs.py configs/models/cadc-tiny.yaml configs/models/cadc-tiny-gpu.yaml \\
        [--set-b vae.block_out_channels=[24,48,96,192] ...] [--rounds 4] [--threads 2]

Decode time does not depend on the weights, so a random-init bundle of a
config times what a trained one would.  On a shared machine absolute times
drift by tens of percent from minute to minute; the configs are therefore
decoded in interleaved rounds (A B C, A B C, ...) and each one's best round is
compared with the first config's best round: the ratio is what carries over
to another machine (the product budget is stated for the README's machine).
Extra variants of a config: ``--variant NAME=CONFIG:KEY=VALUE,KEY=VALUE``
(values parsed as YAML, keys as ``tools/train.py --set``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

KODAK = Path("/work/shared/data/kodak")


def _variant(spec: str) -> tuple[str, Path, list[str]]:
    """``NAME=CONFIG:K=V,K=V`` -> (name, config path, overrides)."""
    name, _, rest = spec.partition("=")
    path, _, sets = rest.partition(":")
    # Overrides are separated by ';' when a value itself holds commas (lists).
    return name, Path(path), [s for s in sets.split(";") if s]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", type=Path, help="model config YAMLs (the first is the reference)")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=CONFIG:KEY=VALUE;KEY=VALUE (a config with --set style overrides)")
    p.add_argument("--image", type=Path, default=KODAK / "kodim01.png", help="image to code (Kodak size: 768x512)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved decode rounds per config")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gateway.codec.base import Knobs
    from gateway.codec.cadc.bundle import create_bundle
    from gateway.codec.cadc.codec import CADCCodec
    from gateway.training.build import read_model_config

    entries = [(c.stem, c, []) for c in args.configs] + [_variant(v) for v in args.variant]
    if not entries:
        p.error("give at least one config")
    img = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = img.shape[:2]
    tmp = tempfile.TemporaryDirectory()
    codecs, streams, params = {}, {}, {}
    for name, path, sets in entries:
        cfg = read_model_config(path, sets)
        bundle = create_bundle(cfg, Path(tmp.name) / name)
        codec = CADCCodec.from_bundle(bundle)
        data = codec.encode(codec.analyze(img), Knobs(128, 128), (w, h))
        codec.decode(data)  # warm-up: one-time allocations do not count
        codecs[name], streams[name] = codec, data
        params[name] = {part: sum(q.numel() for q in getattr(codec.model, part).parameters())
                        for part in ("vae", "unet", "g_s")}
        params[name]["vae_decoder"] = sum(q.numel() for q in codec.model.vae.decoder.parameters())
    best: dict[str, float] = {n: float("inf") for n in codecs}
    stages: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, codec in codecs.items():
            t0 = time.perf_counter()
            _, info = codec.decode_with_info(streams[name])
            dt = time.perf_counter() - t0
            if dt < best[name]:
                best[name], stages[name] = dt, info.get("timings_ms", {})
    ref = next(iter(best))
    rows = {n: {"decode_s": round(best[n], 3), "ratio": round(best[n] / best[ref], 2),
                "stages_ms": {k: round(v, 1) for k, v in stages[n].items()}, "params": params[n]} for n in best}
    for n, r in rows.items():
        print(f"{n:<28} decode {r['decode_s']:.3f} s  x{r['ratio']:.2f}  vae decoder {r['params']['vae_decoder']:,} "
              f"params  stages {r['stages_ms']}")
    print("BENCH_JSON " + json.dumps({"image": str(args.image), "threads": args.threads, "rounds": args.rounds,
                                      "reference": ref, "configs": rows}))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
