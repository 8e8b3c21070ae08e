"""``satgw bundle``: inspect and create CADC model bundles.

    satgw bundle check PATH           report each part, the model id and readiness (exit 1 if not ready)
    satgw bundle create CONFIG OUT    make a random-init bundle from a model config YAML
    satgw bundle pack SRC OUT         copy a bundle with its weights stored in float16 (half the bytes)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.errors import SatgwError


def check(path: Path) -> int:
    """Print a readiness report of the bundle at ``path``; 0 when it loads and is complete."""
    from gateway.codec.cadc.bundle import CODEC_WEIGHTS, CONFIG_FILE, _part_present, load_model, required_parts
    from gateway.codec.cadc.config import CADCConfig

    print(f"bundle {path}")
    if not (path / CONFIG_FILE).is_file():
        print(f"  config        missing   ({path / CONFIG_FILE})")
        print("not ready")
        return 1
    try:
        cfg = CADCConfig.from_yaml(path / CONFIG_FILE)
    except SatgwError as exc:
        print(f"  config        invalid   {exc}")
        print("not ready")
        return 1
    print(f"  config        found     {cfg.name} (text mode {cfg.codec.text_mode}, UGAQ {cfg.codec.ugaq}, "
          f"ADGIC {cfg.codec.adgic}, BFATC {cfg.codec.bfatc})")
    complete = (path / CODEC_WEIGHTS).is_file()
    print(f"  codec         {'found' if complete else 'missing':<9} ({path / CODEC_WEIGHTS})")
    for spec in required_parts(cfg):
        present = _part_present(path / spec.folder, spec)
        complete &= present
        cls = spec.loader.split(":")[1]
        print(f"  {spec.name:<13} {'found' if present else 'missing':<9} {cls} ({path / spec.folder})")
    if not complete:
        print("not ready: parts are missing")
        return 1
    try:
        model = load_model(path)
    except SatgwError as exc:
        print(f"not ready: {exc}")
        return 1
    print("  parameters:")
    for name, module, count in model.part_sizes():
        print(f"    {name:<19} {type(module).__name__:<22} {count:>14,}")
    print(f"  model id      {model.model_id:04x}")
    print(f"  quality calib {calibration_report(path, model.model_id)}")
    print("ready")
    return 0


def calibration_report(path: Path, model_id: int) -> str:
    """One line on the bundle's quality calibration: missing, unusable, stale, or its fit and held-out error."""
    from gateway.codec.cadc.quality_calibration import CALIBRATION_FILE, read_calibration

    refit = f"fit it with: python tools/fit_quality_calibration.py --bundle {path}"
    try:
        cal = read_calibration(path)
    except SatgwError as exc:
        return f"unusable  {exc}"
    if cal is None:
        return (f"missing   (no {CALIBRATION_FILE}: the sender's codec auto uses x̂_aux's own quality for cadc; "
                f"{refit})")
    if cal.model_id != model_id:
        return f"stale     fitted for model {cal.model_id:04x}, not {model_id:04x}: the sender ignores it; {refit}"
    prov = cal.provenance
    parts = []
    for target, unit in (("ms_ssim", ""), ("psnr", " dB")):
        entry = cal.held_out.get(target) or {}
        if isinstance(entry.get("mae"), (int, float)):
            fb = (entry.get("fallback") or {}).get("mae")
            rho = entry.get("spearman")
            parts.append(f"{target} MAE {entry['mae']:.4g}{unit}"
                         + (f" (Spearman {rho:.3f})" if isinstance(rho, (int, float)) else "")
                         + (f" vs x̂_aux alone {fb:.4g}{unit}" if isinstance(fb, (int, float)) else ""))
    fitted = f"fitted for {cal.model_id:04x} on {prov.get('pictures', '?')} training pictures"
    held = f"{prov.get('held_out_pictures', '?')} held out"
    return f"found     {fitted}, {held}: " + ("; ".join(parts) if parts else "no held-out error recorded")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw bundle``."""
    parser = argparse.ArgumentParser(prog="satgw bundle", description="inspect and create CADC model bundles")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="report each part, the model id and readiness")
    p_check.add_argument("path", type=Path)
    p_create = sub.add_parser("create", help="make a random-init bundle from a model config")
    p_create.add_argument("config", type=Path)
    p_create.add_argument("out", type=Path)
    p_create.add_argument("--seed", type=int, default=0)
    p_pack = sub.add_parser("pack", help="copy a bundle with its weights stored at a lower precision "
                                         "(e.g. to commit a training run that spans sessions)")
    p_pack.add_argument("src", type=Path)
    p_pack.add_argument("out", type=Path)
    p_pack.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            return check(args.path)
        if args.cmd == "pack":
            from gateway.codec.cadc.bundle_pack import pack_bundle

            model_id = pack_bundle(args.src, args.out, args.dtype)
            print(f"packed {args.src} into {args.out} ({args.dtype}, model id {model_id:04x})")
            return check(args.out)
        from gateway.codec.cadc.bundle import create_bundle

        out = create_bundle(args.config, args.out, seed=args.seed)
        print(f"created {out}")
        return check(out)
    except SatgwError as exc:
        print(f"satgw bundle: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
