"""``satgw bundle``: inspect and create CADC model bundles.

    satgw bundle check PATH           report each part, the model id and readiness (exit 1 if not ready)
    satgw bundle create CONFIG OUT    make a random-init bundle from a model config YAML
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.errors import SatgwError


def _count(module: object) -> str:
    params = getattr(module, "parameters", None)
    if params is None:
        return "-"
    return f"{sum(p.numel() for p in params()):,}"


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
    for name in ("g_a", "h_a", "h_s", "entropy_bottleneck", "ugaq", "context", "g_s", "aux_decoder", "color", "unet", "vae"):
        module = getattr(model, name)
        if module is not None:
            print(f"    {name:<19} {type(module).__name__:<22} {_count(module):>14}")
    for name in ("text_encoder", "captioner"):
        module = getattr(model.text, name)
        if module is not None:
            print(f"    {name:<19} {type(module).__name__:<22} {_count(module):>14}")
    print(f"  model id      {model.model_id:04x}")
    print("ready")
    return 0


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
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            return check(args.path)
        from gateway.codec.cadc.bundle import create_bundle

        out = create_bundle(args.config, args.out, seed=args.seed)
        print(f"created {out}")
        return check(out)
    except SatgwError as exc:
        print(f"satgw bundle: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
