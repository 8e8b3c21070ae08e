#!/usr/bin/env python
"""Turn what a GPU training run returned (tools/gpu_train_tiny.py) into a normal model bundle.

    python tools/unpack_gpu_bundle.py FILES_AT OUT_BUNDLE [--force]

``FILES_AT`` holds the run's ``run.json``, ``config.yaml`` and
``weights-NN.safetensors`` pieces (the device tool's ``files_at``).  Each
piece is checked against the size and SHA-256 that ``run.json`` lists, the
tensors are cast to float32 and loaded into a model built from
``config.yaml`` (every name and shape must match), and the bundle is saved
the usual way (:func:`gateway.codec.cadc.bundle.save_bundle`: config.yaml,
codec.safetensors, unet/, vae/, scheduler/) with its manifest
(``write_manifest(root, model_id_of(root))``), a ``TRAINING_STATE.json`` and
a ``MODEL_CARD.md`` entry with the run's numbers.  Ends with
``satgw bundle check``'s report; the exit status is that check's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"


def read_pieces(src: Path, run: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of the listed pieces, verified against run.json and cast to float32 where floating."""
    from safetensors.torch import load_file

    pieces = (run.get("weights") or {}).get("pieces") or []
    if not pieces:
        raise SystemExit(f"{src / RUN_JSON} lists no weight pieces (the run exported nothing)")
    state: dict[str, torch.Tensor] = {}
    for piece in pieces:
        path = src / piece["file"]
        if not path.is_file():
            raise SystemExit(f"missing piece {path}")
        data = path.read_bytes()
        if len(data) != piece["bytes"] or hashlib.sha256(data).hexdigest() != piece["sha256"]:
            raise SystemExit(f"piece {path} does not match run.json (size or SHA-256): a partial transfer?")
        for key, value in load_file(str(path)).items():
            if key in state:
                raise SystemExit(f"tensor {key} is in two pieces")
            state[key] = value.float() if value.is_floating_point() else value
    return state


def build_model(src: Path, state: dict[str, torch.Tensor]) -> Any:
    """A CADCModel of ``config.yaml`` holding exactly ``state`` (a mismatch names the tensors)."""
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel

    cfg = CADCConfig.from_yaml(src / CONFIG_YAML)
    model = CADCModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or shapes:
        raise SystemExit(f"the pieces do not fit {src / CONFIG_YAML}: missing {missing[:5]}, unexpected {extra[:5]}, "
                         f"wrong shape {shapes[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def model_card(run: dict[str, Any], cfg: Any, model_id: int) -> str:
    """A run-log entry for the model card, from run.json: what ran, per stage, and validation vs the baseline."""
    env = run.get("env", {})
    vae = cfg.vae
    lines = [
        f"# {cfg.name} — GPU run (unpacked by tools/unpack_gpu_bundle.py)",
        "",
        f"Model id `{model_id:04x}`; config `config.yaml` (VAE widths {vae.get('block_out_channels')}, "
        f"{vae.get('latent_channels')}-channel latent, scaling factor {vae.get('scaling_factor')}; "
        f"C = {cfg.codec.latent_channels}).",
        f"Trained by `bash tools/gpu_train_tiny.sh` ({run.get('plan')} plan, recipe `{run.get('recipe')}`) on "
        f"{env.get('gpu', env.get('device'))} with torch {env.get('torch')}: status **{run.get('status')}**, "
        f"{_fmt(run.get('elapsed_s'), 0)} s of a {_fmt(run.get('budget_s'), 0)} s budget."
        + (f" Error: `{run.get('error')}`." if run.get("error") else ""),
        "",
        "| stage | kind | steps | ms/step | batch × crop | seconds | bf16 | last train loss / PSNR |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for st in run.get("stages", []):
        train = st.get("train", {})
        lines.append(f"| {st['name']} | {st['kind']} | {st.get('steps', '–')} | "
                     f"{_fmt(1e3 * st['s_per_step'], 1) if st.get('s_per_step') else '–'} | "
                     f"{st.get('batch', '–')} × {st.get('crop', '–')}² | {_fmt(st.get('seconds'), 0)} | "
                     f"{st.get('amp', '–')} | {_fmt(train.get('loss'), 4)} / {_fmt(train.get('psnr'))} |")
    data = run.get("data", {})
    lines += ["", f"Validation: {data.get('val_images', '?')} BSDS500-test centre crops ({data.get('val_size', '?')}²), Δ = 1, estimated "
              f"bpp (not coded bytes); the baseline is `{(run.get('baseline') or {}).get('bundle', 'none')}` on the "
              "same crops in the same run.", ""]
    final: dict[str, Any] = {}
    for st in run.get("stages", []):
        for v in st.get("val", []):
            final.update({k: val for k, val in v.items() if k != "step"})
    base = run.get("baseline") or {}
    keys = sorted({k.split("/")[0] for k in list(final) + list(base) if "/" in k},
                  key=lambda k: -float(k[3:]))
    lines += ["| model | VAE round trip PSNR / MS-SSIM | " + " | ".join(f"λ = {k[3:]}: PSNR / MS-SSIM / bpp" for k in keys)
              + " |", "|---|---|" + "---|" * len(keys)]
    for name, rec in (("this run", final), ("baseline", base)):
        if not rec:
            continue
        cells = [f"{_fmt(rec.get(f'{k}/psnr'))} / {_fmt(rec.get(f'{k}/ms_ssim'), 3)} / {_fmt(rec.get(f'{k}/bpp'), 4)}"
                 for k in keys]
        lines.append(f"| {name} | {_fmt(rec.get('vae_psnr'))} / {_fmt(rec.get('vae_ms_ssim'), 3)} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Not yet evaluated on Kodak: run `tools/eval.py` against the shipped bundle as docs/gpu_run.md "
              "says; ship only if it wins there, and move this entry into the shipped bundle's MODEL_CARD.md run log.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="the returned files (run.json, config.yaml, weights-NN.safetensors)")
    p.add_argument("out", type=Path, help="bundle folder to write")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no bundle check report (the exit status still says)")
    args = p.parse_args(argv)

    from gateway.codec.cadc.bundle import model_id_of, save_bundle, write_manifest
    from gateway.codec.cadc.bundle_cli import check

    run = json.loads((args.src / RUN_JSON).read_text())
    if run.get("status") != "complete":
        print(f"warning: the run's status is {run.get('status')!r} ({run.get('error') or 'see run.json events'}); "
              f"unpacking the weights it exported last", file=sys.stderr)
    model = build_model(args.src, read_pieces(args.src, run))
    if args.out.exists():
        if not args.force:
            raise SystemExit(f"{args.out} exists; give --force to replace it")
        shutil.rmtree(args.out)
    save_bundle(model, args.out)
    stages = run.get("stages", [])
    state = {"step": sum(int(st.get("steps", 0)) for st in stages), "stage": stages[-1]["name"] if stages else None,
             "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": "tools/gpu_train_tiny.py",
             "status": run.get("status")}
    (args.out / "TRAINING_STATE.json").write_text(json.dumps(state, indent=1) + "\n")
    model_id = model_id_of(args.out)
    write_manifest(args.out, model_id)  # the id hashes weight files only: the card and state do not change it
    (args.out / "MODEL_CARD.md").write_text(model_card(run, model.config, model_id))
    if args.quiet:
        with contextlib.redirect_stdout(io.StringIO()):
            return check(args.out)
    return check(args.out)


if __name__ == "__main__":
    sys.exit(main())
