#!/usr/bin/env python
"""The sender's footprint: parameters, peak RSS and start-up time of loading a CADC bundle to encode, in a fresh process.

    python tools/bench_sender.py                                   # cadc-tiny: torch alone, whole model (before), encoder only
    python tools/bench_sender.py --config configs/models/cadc-sd-turbo.yaml --build /tmp/sd-turbo-sender --modes encoder

Each measurement runs in its own new interpreter (so nothing is imported or
cached beforehand): it imports the codec, loads the bundle (``--mode full``:
the whole model, as the sender did before; ``encoder``: the encoder tensors
only) and rate-controls one Kodak image into 4 frames.  Start-up is from the
interpreter's start to the codec being ready; peak RSS is the process's
high-water mark after the encode.  ``--build`` makes a random-init bundle of
``--config`` at full size first (once; reused when it is there); with
``--modes encoder`` only what a sender host holds (``config.yaml``,
``codec.safetensors``, ``manifest.json``: no UNet, VAE or text weights at
all), else the whole bundle, whose encoder is then also loaded from a copy
holding only those three files.  Prints a table and a last line ``BENCH_JSON {...}``
(``tools/bench.py`` collects it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KODAK = Path("/work/shared/data/kodak/kodim23.png")


def child(bundle: str, mode: str, image: str) -> None:
    """One measurement (run in a fresh interpreter): prints a JSON line."""
    import resource

    t0 = time.perf_counter()
    import numpy as np
    from PIL import Image

    from gateway.codec.registry import make_codec
    from gateway.ratecontrol import Budget, fit

    t_import = time.perf_counter()
    if mode == "floor":  # what any torch-based sender pays before loading a model: import torch
        import torch  # noqa: F401

        t_ready = time.perf_counter()
        print(json.dumps({"mode": mode, "parameters": 0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "import_s": t_import - t0, "load_s": t_ready - t_import, "startup_s": t_ready - t0,
                          "encode_s": 0.0, "bytes": 0, "model_id": None, "diffusers_imported": False,
                          "transformers_imported": False}))
        return
    codec = make_codec("cadc", bundle=bundle, device="cpu", encoder_only=mode == "encoder")
    t_ready = time.perf_counter()
    picture = np.asarray(Image.open(image).convert("RGB")) if image else np.zeros((512, 768, 3), np.uint8) + 128
    result = fit(codec, picture, Budget(4, 450))
    t_encoded = time.perf_counter()
    params = sum(p.numel() for p in codec.model.parameters())
    print(json.dumps({
        "mode": mode, "parameters": params, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "import_s": t_import - t0, "load_s": t_ready - t_import, "startup_s": t_ready - t0,
        "encode_s": t_encoded - t_ready, "bytes": result.bytes, "model_id": f"{codec.model_id:04x}",
        "diffusers_imported": "diffusers" in sys.modules, "transformers_imported": "transformers" in sys.modules,
    }))


def measure(bundle: Path, mode: str, image: str) -> dict:
    """Run :func:`child` in a new interpreter; adds the wall time from exec to the result."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(bundle), mode, image],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed ({mode}, {bundle}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    out["bundle"] = str(bundle)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="bundle folder (default: the embedded cadc-tiny, or --build)")
    p.add_argument("--config", type=Path, help="with --build: the model config to make a random full-size bundle of")
    p.add_argument("--build", type=Path, help="make (or reuse) a random-init bundle of --config here")
    p.add_argument("--modes", default="floor,full,encoder",
                   help="comma-separated: floor (import torch only), full (the whole model), encoder")
    p.add_argument("--image", default=str(KODAK) if KODAK.is_file() else "", help="image to encode (Kodak 23)")
    p.add_argument("--repeat", type=int, default=2, help="runs per mode (the best start-up is reported)")
    args = p.parse_args(argv)

    from gateway.paths import bundle_dir

    bundle = args.bundle or bundle_dir("cadc-tiny")
    if args.build:
        from gateway.codec.cadc.bundle import CODEC_WEIGHTS
        from gateway.codec.cadc.tiny_parts import random_bundle

        if not (args.build / CODEC_WEIGHTS).is_file():
            if not args.config:
                p.error("--build needs --config")
            t0 = time.perf_counter()
            random_bundle(args.config, args.build, sender_only=args.modes == "encoder")
            print(f"built a random {args.config.stem} bundle in {args.build} ({time.perf_counter() - t0:.0f} s)")
        bundle = args.build
    runs: list[dict] = []
    sender_copy = None
    for mode in args.modes.split(","):
        best = min((measure(bundle, mode, args.image) for _ in range(args.repeat)), key=lambda r: r["startup_s"])
        runs.append(best)
    if args.build and "encoder" in args.modes and (bundle / "unet").is_dir():
        from gateway.codec.cadc.bundle import CODEC_WEIGHTS, CONFIG_FILE, MANIFEST

        sender_copy = Path(tempfile.mkdtemp(prefix="sender-copy-"))
        for name in (CONFIG_FILE, CODEC_WEIGHTS, MANIFEST):
            os.symlink(bundle.resolve() / name, sender_copy / name)
        lone = measure(sender_copy, "encoder", args.image)
        lone["bundle"] = f"{bundle} (config, codec weights and manifest only)"
        runs.append(lone)
        shutil.rmtree(sender_copy)
    print(f"{'mode':<8} {'parameters':>14} {'peak RSS MB':>12} {'start-up s':>11} {'(import / load)':>16} "
          f"{'encode s':>9} {'diffusers/transformers':>23}  bundle")
    for r in runs:
        heavy = "yes" if r["diffusers_imported"] or r["transformers_imported"] else "no"
        print(f"{r['mode']:<8} {r['parameters']:>14,} {r['peak_rss_mb']:>12.0f} {r['startup_s']:>11.2f} "
              f"{r['import_s']:>7.2f} / {r['load_s']:<6.2f} {r['encode_s']:>9.2f} {heavy:>23}  {r['bundle']}")
    ids = {r["model_id"] for r in runs if r["model_id"]}
    print("BENCH_JSON " + json.dumps({"runs": runs, "same_model_id": len(ids) == 1}))
    return 0 if len(ids) == 1 else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        sys.exit(main())
