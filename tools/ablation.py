"""The cadc-tiny ablation of issue #6: M0 (no UGAQ, no ADGIC), M1 (+UGAQ), M2 (+UGAQ +ADGIC).

Trains the three variants with the same recipe, data, seed and steps (codec
from scratch on top of one trained VAE, frozen), then evaluates them on the
same images and budgets with BD-rates against M0::

    python tools/ablation.py --vae-bundle gateway/bundles/cadc-tiny --out /work/ckpt/ablation \\
        [--images /work/shared/data/kodak] [--only M1] [--skip-eval]

Each variant trains in ``<out>/<variant>`` (resumable: run the same command
again after an interruption) and is exported to ``<out>/<variant>/bundle``;
the evaluation (``tools/eval.py``) goes to ``<out>/eval``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Variant -> model config overrides on top of the cadc-tiny config.
VARIANTS: dict[str, list[str]] = {
    "M0": ["codec.ugaq=false", "codec.adgic=false"],
    "M1": ["codec.ugaq=true", "codec.adgic=false"],
    "M2": ["codec.ugaq=true", "codec.adgic=true"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae-bundle", required=True, help="bundle whose trained VAE every variant starts from")
    p.add_argument("--out", required=True, help="folder for the three runs and the evaluation")
    p.add_argument("--model", default=str(ROOT / "configs/models/cadc-tiny.yaml"), help="base model config")
    p.add_argument("--train", default=str(ROOT / "configs/train/cadc-tiny-ablation.yaml"), help="recipe")
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="train only these variants")
    p.add_argument("--threads", type=int, help="torch threads per training run (overrides the recipe)")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--images", default="/work/shared/data/kodak", help="evaluation images")
    p.add_argument("--frames", default="1,2,4,8", help="evaluation budgets in frames")
    p.add_argument("--limit", type=int, help="evaluate on the first N images only")
    return p.parse_args(argv)


def train_command(args: argparse.Namespace, variant: str) -> list[str]:
    """The tools/train.py invocation for one variant."""
    run = Path(args.out) / variant
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "--model", args.model, "--train", args.train,
           "--out", str(run), "--export", str(run / "bundle"), "--resume", "--no-progress",
           "--init-bundle", args.vae_bundle, "--init-parts", "vae."]
    for item in VARIANTS[variant]:
        cmd += ["--set", item]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def eval_command(args: argparse.Namespace) -> list[str]:
    """The tools/eval.py invocation comparing the three variants (BD-rates against M0)."""
    out = Path(args.out)
    codecs = ",".join(f"{v}={out / v / 'bundle'}" for v in VARIANTS)
    cmd = [sys.executable, str(ROOT / "tools/eval.py"), "--codecs", codecs, "--reference", "M0",
           "--images", args.images, "--frames", args.frames, "--out", str(out / "eval"), "--reuse",
           "--no-slow-metrics", "--crops", "0"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for variant in args.only or list(VARIANTS):
        print(f"== {variant}: {' '.join(VARIANTS[variant])}", flush=True)
        rc = subprocess.call(train_command(args, variant))
        if rc != 0:
            print(f"error: training {variant} failed with exit status {rc}", file=sys.stderr)
            return rc
    if args.skip_eval:
        return 0
    return subprocess.call(eval_command(args))


if __name__ == "__main__":
    sys.exit(main())
