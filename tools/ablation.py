"""The cadc-tiny ablation of issue #6: M0 (no UGAQ, no ADGIC), M1 (+UGAQ), M2 (+UGAQ +ADGIC).

Trains the three variants with the same recipe, data, seed and steps (codec
from scratch on top of one trained VAE, frozen), then evaluates them on the
same images and budgets with BD-rates against M0::

    python tools/ablation.py --vae-bundle gateway/bundles/cadc-tiny --out /work/ckpt/ablation \\
        [--images /work/shared/data/kodak] [--only M1] [--skip-eval]

Each variant trains in ``<out>/<variant>`` (resumable: run the same command
again after an interruption) and is exported to ``<out>/<variant>/bundle``;
the evaluation (``tools/eval.py``) goes to ``<out>/eval``.

With ``--seeds 1 2 3`` every variant is trained and evaluated once per seed
(``<out>/seed-N/<variant>``, ``<out>/seed-N/eval``) and the seeds are then
summarised in ``<out>/ablation.md`` / ``ablation.json`` / ``ablation.png``: each contrast's
BD-rate (UGAQ: M1 against M0; ADGIC: M2 against M1; both: M2 against M0) as
mean ± standard deviation over seeds, with a 95 % t interval, and whether that
interval excludes zero, i.e. whether the difference is larger than the seed
spread.  ``--summary-only`` summarises the seeds whose evaluation exists
(a schedule that spans sessions).

``--only M0 M1i`` adds a fourth, opt-in variant: M1 with UGAQ's fresh network
started at m = 1.05 everywhere (``codec.ugaq_init_scale``) instead of a random
init, contrasted with M0 where both exist.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from gateway.eval import metrics

ROOT = Path(__file__).resolve().parents[1]

#: Variant -> model config overrides on top of the cadc-tiny config.
VARIANTS: dict[str, list[str]] = {
    "M0": ["codec.ugaq=false", "codec.adgic=false"],
    "M1": ["codec.ugaq=true", "codec.adgic=false"],
    "M2": ["codec.ugaq=true", "codec.adgic=true"],
    # M1 with UGAQ's fresh network started at m = 1.05 everywhere (nearly M0) instead of PyTorch's random
    # init: is the seed-fragility of UGAQ's gain its start?  Opt-in (--only M0 M1i).
    "M1i": ["codec.ugaq=true", "codec.adgic=false", "codec.ugaq_init_scale=1.05"],
}
#: What a run trains and evaluates without --only: the paper's three.
DEFAULT_VARIANTS = ("M0", "M1", "M2")

#: Contrast -> (reference variant, variant): what each component is measured by.
CONTRASTS: dict[str, tuple[str, str]] = {
    "UGAQ (M1 vs M0)": ("M0", "M1"),
    "ADGIC (M2 vs M1)": ("M1", "M2"),
    "UGAQ + ADGIC (M2 vs M0)": ("M0", "M2"),
    "UGAQ, started at m = 1 (M1i vs M0)": ("M0", "M1i"),
}
QUALITIES = ("ms_ssim", "psnr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae-bundle", required=True, help="bundle whose trained VAE every variant starts from")
    p.add_argument("--pretrained", nargs="+", default=["vae."], metavar="PREFIX",
                   help="parameter-name prefixes every variant takes from --vae-bundle (default: the VAE only; "
                        "configs/train/cadc-tiny-ablation-long.yaml gives all but UGAQ's and ADGIC's own modules)")
    p.add_argument("--out", required=True, help="folder for the three runs and the evaluation")
    p.add_argument("--model", default=str(ROOT / "configs/models/cadc-tiny.yaml"), help="base model config")
    p.add_argument("--train", default=str(ROOT / "configs/train/cadc-tiny-ablation.yaml"), help="recipe")
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="train only these variants")
    p.add_argument("--threads", type=int, help="torch threads per training run (overrides the recipe)")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--images", default="/work/shared/data/kodak", help="evaluation images")
    p.add_argument("--frames", default="1,2,4,8", help="evaluation budgets in frames")
    p.add_argument("--limit", type=int, help="evaluate on the first N images only")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="train and evaluate every variant once per seed (replacing the recipe's) and summarise "
                        "the BD-rates over seeds")
    p.add_argument("--summary-only", action="store_true",
                   help="with --seeds: no training or evaluation, only summarise the seeds evaluated so far")
    args = p.parse_args(argv)
    if args.summary_only and not args.seeds:
        p.error("--summary-only needs --seeds")
    return args


def run_dir(args: argparse.Namespace, seed: int | None) -> Path:
    """Where one seed's variants and evaluation live (``--out`` itself without ``--seeds``)."""
    return Path(args.out) / f"seed-{seed}" if seed is not None else Path(args.out)


def train_command(args: argparse.Namespace, variant: str, seed: int | None = None) -> list[str]:
    """The tools/train.py invocation for one variant (and seed)."""
    run = run_dir(args, seed) / variant
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "--model", args.model, "--train", args.train,
           "--out", str(run), "--export", str(run / "bundle"), "--resume", "--no-progress",
           "--init-bundle", args.vae_bundle, "--init-parts", *args.pretrained,
           # Every variant and seed freezes the same VAE encoder on the same images: encode them once.
           "--latents-dir", str(Path(args.out) / "latents")]
    for item in VARIANTS[variant]:
        cmd += ["--set", item]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if seed is not None:
        cmd += ["--recipe-set", f"seed={seed}"]
    return cmd


def eval_command(args: argparse.Namespace, seed: int | None = None) -> list[str]:
    """The tools/eval.py invocation comparing the variants trained for this seed (BD-rates against M0)."""
    out = run_dir(args, seed)
    # Every variant trained in this folder so far (an --only run adds to the earlier ones' evaluation).
    codecs = ",".join(f"{v}={out / v / 'bundle'}" for v in VARIANTS if (out / v / "bundle").is_dir())
    cmd = [sys.executable, str(ROOT / "tools/eval.py"), "--codecs", codecs, "--reference", "M0",
           "--images", args.images, "--frames", args.frames, "--out", str(out / "eval"), "--reuse",
           "--no-slow-metrics", "--crops", "0"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    return cmd


def load_records(eval_dir: Path) -> list[dict[str, Any]]:
    """The per-image measurements of one evaluation (``tools/eval.py --out``)."""
    records: list[dict[str, Any]] = []
    for path in sorted((eval_dir / "images").glob("*.json")):
        records += json.loads(path.read_text())
    return records


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation and 95 % t interval of one contrast's BD-rates over seeds.

    ``resolved`` says whether the interval excludes zero: the difference is then larger than what changing the
    seed alone does.  With one seed there is no spread to compare with, so nothing is resolved.
    """
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"n": n, "values": values, "mean": mean, "std": None, "ci95": None, "resolved": False}
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"n": n, "values": values, "mean": mean, "std": std, "ci95": [mean - half, mean + half],
            "resolved": bool(mean - half > 0 or mean + half < 0)}


def summarise(out: Path, seeds: list[int]) -> dict[str, Any]:
    """BD-rates of every contrast per seed, and their spread over the seeds evaluated so far."""
    per_seed: dict[int, dict[str, dict[str, float | None]]] = {}
    quality: dict[str, dict[int, dict[int, list[float]]]] = {}  # variant -> frames -> seed -> per-image MS-SSIM
    for seed in seeds:
        records = load_records(out / f"seed-{seed}" / "eval")
        present = {r["codec"] for r in records}
        if "M0" not in present:
            continue
        per_seed[seed] = {}
        for name, (ref, variant) in CONTRASTS.items():
            if {ref, variant} <= present:
                per_seed[seed][name] = metrics.mean_bd_rates(records, [variant], ref, QUALITIES)[variant]
        for r in records:
            if r.get("ok"):
                quality.setdefault(r["codec"], {}).setdefault(r["frames"], {}).setdefault(seed, []).append(r["ms_ssim"])
    contrasts = {}
    for name in CONTRASTS:
        if not any(name in by_name for by_name in per_seed.values()):
            continue  # an opt-in variant no seed has trained
        contrasts[name] = {}
        for q in QUALITIES:
            vals = [v for s in per_seed if (v := per_seed[s].get(name, {}).get(q)) is not None]
            contrasts[name][q] = spread(vals) if vals else None
    # Each seed's mean over images, then their mean and spread over seeds.
    ms_ssim = {v: {str(f): {"mean": float(np.mean(m := [float(np.mean(x)) for x in by_seed.values()])),
                            "std": float(np.std(m, ddof=1)) if len(m) > 1 else None}
                   for f, by_seed in sorted(by_frames.items())}
               for v, by_frames in sorted(quality.items())}
    return {"seeds": sorted(per_seed), "per_seed": {str(s): v for s, v in per_seed.items()},
            "contrasts": contrasts, "mean_ms_ssim": ms_ssim}


def markdown(summary: dict[str, Any]) -> str:
    """The summary as the model card's table."""
    def cell(c: dict[str, Any] | None) -> str:
        if c is None:
            return "–"
        if c["std"] is None:
            return f"{c['mean']:+.1f} % (1 seed)"
        lo, hi = c["ci95"]
        return f"{c['mean']:+.1f} ± {c['std']:.1f} % [{lo:+.1f}, {hi:+.1f}]{' **resolved**' if c['resolved'] else ''}"

    lines = [f"Seeds: {', '.join(map(str, summary['seeds'])) or 'none evaluated'}", "",
             "| contrast | BD-rate MS-SSIM | BD-rate PSNR | per seed (MS-SSIM / PSNR) |", "|---|---|---|---|"]
    for name, q in summary["contrasts"].items():
        seeds = "; ".join(
            " / ".join("–" if v is None else f"{v:+.1f}" for v in summary["per_seed"][str(s)].get(name, {}).values())
            or "–" for s in summary["seeds"])  # – : a seed without this contrast's variants
        lines.append(f"| {name} | {cell(q['ms_ssim'])} | {cell(q['psnr'])} | {seeds} |")
    lines += ["", "mean ± standard deviation over seeds [95 % t interval]; resolved: the interval excludes 0, "
              "the difference is larger than the seed spread.", ""]
    frames = sorted({f for by_frames in summary["mean_ms_ssim"].values() for f in by_frames}, key=int)
    if frames:
        lines += [f"| MS-SSIM (mean ± sd over seeds) | {' | '.join(f'{f} frame' + ('' if f == '1' else 's') for f in frames)} |",
                  "|---" * (len(frames) + 1) + "|"]
        for variant, by_frames in summary["mean_ms_ssim"].items():
            cells = ["–" if (c := by_frames.get(f)) is None else
                     f"{c['mean']:.4f}" + ("" if c["std"] is None else f" ± {c['std']:.4f}") for f in frames]
            lines.append(f"| {variant} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Each contrast's BD-rate per seed (dots) with the mean and its 95 % t interval (bar), one panel per metric.

    A bar that crosses the zero line is a difference the seeds do not resolve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = list(summary["contrasts"])
    fig, axes = plt.subplots(1, len(QUALITIES), figsize=(5.2 * len(QUALITIES), 3.6), dpi=120, sharey=True)
    for ax, q in zip(np.atleast_1d(axes), QUALITIES):
        for row, name in enumerate(names):
            c = summary["contrasts"][name][q]
            if c is None:
                continue
            ax.scatter(c["values"], [row] * len(c["values"]), color="grey", s=18, zorder=3)
            if c["ci95"] is not None:
                lo, hi = c["ci95"]
                ax.plot([lo, hi], [row, row], color="tab:blue" if c["resolved"] else "tab:orange", lw=3, alpha=0.7)
            ax.scatter([c["mean"]], [row], marker="|", s=300, color="black", zorder=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"BD-rate {'MS-SSIM' if q == 'ms_ssim' else 'PSNR'} % (negative: fewer bits)")
        ax.grid(True, axis="x", alpha=0.3)
    np.atleast_1d(axes)[0].invert_yaxis()  # the axes share y: once turns both, the first contrast on top
    key = [Line2D([], [], color="grey", marker="o", ls="", label="one seed"),
           Line2D([], [], color="black", marker="|", ms=12, ls="", label="mean over seeds"),
           Line2D([], [], color="tab:blue", lw=3, label="95 % interval, excludes 0"),
           Line2D([], [], color="tab:orange", lw=3, label="95 % interval, includes 0")]
    fig.legend(handles=key, loc="lower center", ncol=4, fontsize=8, frameon=False)
    seeds = summary["seeds"]
    fig.suptitle(f"Ablation over seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} (Kodak)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for seed in (args.seeds or [None]) if not args.summary_only else []:
        for variant in args.only or list(DEFAULT_VARIANTS):
            print(f"== {variant}{'' if seed is None else f' seed {seed}'}: {' '.join(VARIANTS[variant])}", flush=True)
            rc = subprocess.call(train_command(args, variant, seed))
            if rc != 0:
                print(f"error: training {variant} failed with exit status {rc}", file=sys.stderr)
                return rc
        if not args.skip_eval:
            rc = subprocess.call(eval_command(args, seed))
            if rc != 0:
                return rc
    if args.seeds:
        summary = summarise(Path(args.out), args.seeds)
        (Path(args.out) / "ablation.json").write_text(json.dumps(summary, indent=1))
        text = markdown(summary)
        (Path(args.out) / "ablation.md").write_text(text)
        if summary["seeds"]:
            plot(summary, Path(args.out) / "ablation.png")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
