"""``satgw encode`` and ``satgw decode``: one image into a packet budget and back.

``encode`` runs the rate controller (:mod:`gateway.ratecontrol`) so the whole
bitstream fits the frames given, prints what it chose and what it cost, and
writes the bitstream; ``decode`` turns a bitstream file back into a PNG.
Exit status: 0 done, 1 error (bad file, corrupt bitstream, bad option),
2 usage, 3 the image does not fit the budget (the message says how many
frames it needs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from gateway.codec import bitstream
from gateway.codec.image_io import png_bytes, read_rgb, write_atomic
from gateway.codec.registry import CODEC_NAMES, decoder_for, make_codec
from gateway.errors import BudgetError, SatgwError
from gateway.ratecontrol.auto import AUTO

EXIT_ERROR = 1
EXIT_BUDGET = 3


def _fail(prog: str, message: str, code: int = EXIT_ERROR) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _load_codec(name: str | None, bundle: str | None, refine: int = 0) -> tuple[Any, str]:
    """The codec to use and a note on how it was chosen (CADC: only its encoder is loaded, as on the sender,
    unless ``refine`` asks for encoder-side refinement, which needs the whole model)."""
    if name is not None:
        return make_codec(name, bundle=bundle, encoder_only=True, refine=refine), f"codec {name} (asked for)"
    try:
        return make_codec("cadc", bundle=bundle, encoder_only=True, refine=refine), \
            "codec cadc (default: the model bundle loaded)"
    except (SatgwError, ImportError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return make_codec("avif"), f"codec avif (default fallback: cadc did not load: {reason})"


def encode_main(argv: list[str]) -> int:
    """``satgw encode IMAGE --packets N``: rate-controlled encode into N frames."""
    prog = "satgw encode"
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Encode an image so its whole bitstream fits N frames of the link (rate controlled).",
        epilog="Exit status: 0 done, 1 error, 2 usage, 3 does not fit (the message says how many frames it needs).",
    )
    ap.add_argument("image", type=Path, help="input image (any format Pillow reads)")
    ap.add_argument("--packets", "-n", type=int, required=True, metavar="N", help="frame budget (total frames)")
    ap.add_argument("-o", "--output", type=Path, help="bitstream file to write (default: IMAGE with .sgw)")
    ap.add_argument("--codec", choices=[*CODEC_NAMES, AUTO],
                    help="codec, or auto: the candidate with the best expected quality for this image and budget "
                    "(default: cadc if its bundle loads, else avif)")
    ap.add_argument("--candidates", help="with --codec auto: comma-separated codecs to choose from "
                    "(default: cadc and every classical backend here)")
    ap.add_argument("--metric", default="ms_ssim", help="with --codec auto: ms_ssim (default) or psnr")
    ap.add_argument("--frame-size", type=int, default=450, help="bytes per frame on the wire (default 450)")
    ap.add_argument("--parity", type=int, default=0, metavar="M", help="of the N frames, M are erasure-code parity")
    ap.add_argument("--auth-tag-len", type=int, default=0, metavar="B", help="HMAC tag bytes per frame (0 = none)")
    ap.add_argument("--bundle", help="CADC model bundle folder (default: the embedded models' ladder, which picks "
                    "the model by the budget's bits per pixel: gateway/bundles/ladder.yaml)")
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="cadc: refine the chosen setting's symbols with STEPS gradient steps through the decoder "
                    "(better pictures in the same budget; seconds per step at Kodak size; loads the whole model; "
                    "pictures above 1 MP are not refined; default 0: off)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    from gateway.ratecontrol import Budget, fit  # after parsing, so --help stays fast
    from gateway.ratecontrol.ladder import ladder_for

    if args.candidates and args.codec != AUTO:
        return _fail(prog, "--candidates goes with --codec auto", 2)
    if args.refine < 0:
        return _fail(prog, "--refine takes a number of steps >= 0", 2)
    if args.refine and args.codec not in (None, "cadc"):
        return _fail(prog, "--refine goes with the cadc codec", 2)

    out_path = args.output or args.image.with_suffix(".sgw")
    try:
        image = read_rgb(args.image.read_bytes())
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        return _fail(prog, f"cannot read image {args.image}: {exc}")
    try:
        budget = Budget(args.packets, args.frame_size, args.auth_tag_len, args.parity)
        cadc_bundle = ladder_for(args.bundle, None).bundle_for(budget, image.shape[1], image.shape[0])
        choice = None
        if args.codec == AUTO:
            choice, notes = _choose(args, image, budget, cadc_bundle)
            result, how = choice.result, f"codec {choice.codec} (auto: best expected {choice.metric})"
        else:
            codec, how = _load_codec(args.codec, cadc_bundle, args.refine)
            result = fit(codec, image, budget, label=args.image.name)
        write_atomic(out_path, result.bitstream)
    except BudgetError as exc:
        return _fail(prog, str(exc), EXIT_BUDGET)
    except (SatgwError, ImportError, OSError) as exc:
        return _fail(prog, str(exc))

    info = result.as_dict()
    if choice is not None:
        info["auto"] = {**choice.as_dict(), "notes": notes}
    if args.json:
        print(json.dumps({"input": str(args.image), "output": str(out_path), "chosen_by": how, **info}))
        return 0
    w, h = image.shape[1], image.shape[0]
    cw, ch = bitstream.scaled_size(w, h, result.knobs.scale_code)
    setting = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info["setting"].items())
    scale = f"downscaled to {cw}x{ch} (x{result.scale:.3f})" if result.downscaled else f"full size {w}x{h}"
    print(f"{args.image} -> {out_path}")
    print(f"  {how}")
    print(f"  setting: {setting}; {scale}")
    print(
        f"  cost: {result.bytes} B of {result.budget_bytes} B ({100 * result.utilization:.1f} %), "
        f"budget {result.budget_counting}"
    )
    print(f"  search: {result.candidates} candidates in {result.seconds:.2f} s")
    if result.refinement is not None:
        _print_refinement(result.refinement)
    if choice is not None:
        _print_choice(choice, notes)
    return 0


def _print_refinement(report: dict[str, Any]) -> None:
    """One line per refinement pass: setting, steps, the model's loss terms before -> after, bytes, kept or not."""
    for i, p in enumerate(report["passes"]):
        kept = "kept" if i == report["chosen_pass"] else "not kept"
        print(f"  refinement pass {i + 1} at λ code {p['knobs'][0]}, Δ code {p['knobs'][1]}: {p['iterations']} steps "
              f"in {p['seconds']:.1f} s, distortion {p['distortion_before']:.4f} -> {p['distortion_after']:.4f}, "
              f"est. bits {p['bits_before']:.0f} -> {p['bits_after']:.0f}, {p['bytes']} B ({kept})")
    if report["chosen_pass"] is None:
        print(f"  refinement did not pay: the search's {report['search_bytes']} B bitstream is sent")


def _choose(args: argparse.Namespace, image: Any, budget: Any, cadc_bundle: str | None) -> tuple[Any, list[str]]:
    """``--codec auto``: the choice among the candidates (CADC: ``cadc_bundle``, the ladder's model for this
    budget), and notes on candidates that did not load or fell back."""
    from gateway.codec.registry import available_codecs
    from gateway.ratecontrol.auto import AutoSettings, check_candidates, choose_codec, default_candidates, \
        load_candidates

    names = check_candidates(args.candidates.split(","), available_codecs()) if args.candidates \
        else default_candidates()
    settings = AutoSettings(names, args.metric)
    codecs, missing = load_candidates(names, lambda n: make_codec(n, bundle=cadc_bundle, encoder_only=True))
    notes = [f"{name} left out: {why}" for name, why in missing.items()]
    choice = choose_codec(codecs, image, budget, settings, label=args.image.name,
                          on_fallback=lambda name, note: notes.append(f"{name}: {note}"))
    return choice, notes


def _print_choice(choice: Any, notes: list[str]) -> None:
    """The auto candidates as a small table, best expected first."""
    print(f"  auto: chose {choice.codec} by {choice.metric} in {choice.seconds:.2f} s")
    print(f"    {'codec':<6} {'state':<9} {'ms_ssim':>8} {'psnr':>7} {'bytes':>6}  how")
    for c in choice.candidates:
        ms, ps = c.quality.get("ms_ssim"), c.quality.get("psnr")
        how = c.kind or "-"
        if c.kind == "predicted":
            how += f" ({c.source})"
        print(f"    {c.codec:<6} {c.state:<9} {'-' if ms is None else f'{ms:.4f}':>8} "
              f"{'-' if ps is None else f'{ps:.2f}':>7} {c.bytes or '-':>6}  {how}"
              + (f": {c.reason}" if c.reason and c.state in ('unfit', 'failed') else ""))
    for note in notes:
        print(f"    note: {note}")


def decode_main(argv: list[str]) -> int:
    """``satgw decode FILE -o out.png``: decode a bitstream file with the codec its header names."""
    prog = "satgw decode"
    ap = argparse.ArgumentParser(prog=prog, description="Decode a satgw bitstream file to a PNG image.")
    ap.add_argument("bitstream", type=Path, help="bitstream file written by 'satgw encode'")
    ap.add_argument("-o", "--output", type=Path, help="PNG to write (default: the input with .png)")
    ap.add_argument("--bundle", action="append",
                    help="CADC model bundle folder (default: every embedded model); repeat it to give several: "
                    "the one whose model id the bitstream names decodes")
    ap.add_argument("--device", default="auto", help="where CADC decodes: auto (a GPU if there is one), cpu, cuda, "
                    "cuda:N (default auto)")
    ap.add_argument("--precision", default="auto", help="dtype of the UNet, VAE and text models on a GPU: auto "
                    "(fp16), fp16, bf16 or fp32 (default auto; the CPU always uses fp32)")
    ap.add_argument("--partial", action="store_true",
                    help="the file may be a prefix of a bitstream (frames still missing): decode the layers it "
                    "holds, the rest predicted (progressive codecs such as cadc)")
    args = ap.parse_args(argv)

    out_path = args.output or args.bitstream.with_suffix(".png")
    try:
        data = args.bitstream.read_bytes()
        header, _ = bitstream.unpack(data)
        codec = decoder_for(header, args.bundle or (None,), device=args.device, precision=args.precision)
        image, info = codec.decode_with_info(data, partial=args.partial)
        write_atomic(out_path, png_bytes(image))
    except (SatgwError, ImportError, OSError) as exc:
        return _fail(prog, f"{args.bitstream}: {exc}")
    cw, ch = header.coded_size
    layers = "" if info.get("complete", True) else f", preview: {info['layers']} of {info['layers_total']} layers"
    print(
        f"{args.bitstream} ({len(data)} B, {header.codec_name}, {header.width}x{header.height}, "
        f"coded {cw}x{ch}, lam_code {header.lam_code}, delta_code {header.delta_code}{layers}) -> {out_path}"
    )
    return 0
