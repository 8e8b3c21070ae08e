"""``satgw demo``: the whole chain on sample photographs, in one command.

Starts the link simulator, the ground station and the sender as separate
processes on loopback, with the ground station's live web page (``satgw
web``; its URL is printed: open it to watch the pictures land) and every
daemon's Prometheus metrics; sends every sample image at each budget with
CADC and with the best classical backend for that image and budget, shows
progress, then writes ``demo-out/`` (reconstructions, contact sheets, JSON and
an ``index.html`` report) and stops every process, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from gateway.eval.report import COLUMNS, DemoRow, contact_sheet, table_cells, write_index
from gateway.errors import BudgetError, SatgwError
from gateway.codec.image_io import png_bytes
from gateway.eval.launcher import Daemons, link_stats, request
from gateway.ratecontrol.ladder import LadderModels, ladder_for

CLASSICAL = ("avif", "jxl", "webp", "jpeg")
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")


def load_images(folder: str | None, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The demo's images: every image file in ``folder``, or scikit-image's sample photographs."""
    out: list[tuple[str, np.ndarray]] = []
    if folder:
        for p in sorted(Path(folder).iterdir()):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
                out.append((p.stem, np.asarray(Image.open(p).convert("RGB"))))
        if not out:
            raise SatgwError(f"no images (png, jpg, webp, bmp, tif) found in {folder}")
    else:
        import skimage.data

        for name in SAMPLES:
            img = getattr(skimage.data, name)()
            if img.ndim == 2:
                img = np.stack([img] * 3, -1)
            out.append((name, np.ascontiguousarray(img[..., :3]).astype(np.uint8)))
    return out[:limit] if limit else out


def _setting_text(codec: Any, knobs: Any) -> str:
    d = codec.describe(knobs)
    parts = []
    for key in ("lambda", "lam", "delta", "quality", "scale"):
        if key in d and d[key] is not None:
            v = d[key]
            parts.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
    return " ".join(parts) or json.dumps(d)


def plan(images: list[tuple[str, np.ndarray]], budgets: list[int], cadc: Callable[[np.ndarray, Any], Any] | None,
         frame_size: int, console: Any) -> list[DemoRow]:
    """Encode locally once to pick the best classical codec per image and budget, and to time encodes.

    ``cadc(image, budget)`` is the CADC codec the sender uses for that
    picture and budget (its model ladder's rung), or None without CADC.

    The pick is the sender's own ``codec: auto`` choice among the classical
    backends (:func:`gateway.ratecontrol.auto.choose_codec`: each decoded
    here and measured by MS-SSIM).  The sender re-encodes on its own (the
    rate controller is deterministic), so what goes on the air is exactly
    what was measured here.
    """
    from gateway.codec.registry import make_codec
    from gateway.ratecontrol import Budget, fit
    from gateway.ratecontrol.auto import AutoSettings, choose_codec

    classical = [make_codec(name) for name in CLASSICAL]
    settings = AutoSettings(CLASSICAL, "ms_ssim")
    rows: list[DemoRow] = []
    for name, img in images:
        for frames in budgets:
            if cadc is not None:
                try:
                    codec = cadc(img, Budget(frames, frame_size))
                    res = fit(codec, img, Budget(frames, frame_size))
                    rows.append(DemoRow(name, frames, "cadc", bytes=res.bytes,
                                        setting=_setting_text(codec, res.knobs), encode_ms=res.seconds * 1000))
                except BudgetError as e:
                    rows.append(DemoRow(name, frames, "cadc", state="skipped", reason=str(e)))
            try:
                choice = choose_codec(classical, img, Budget(frames, frame_size), settings, label=name)
                best = next(c for c in classical if c.name == choice.codec)
                rows.append(DemoRow(name, frames, choice.codec, bytes=choice.result.bytes,
                                    setting=_setting_text(best, choice.result.knobs),
                                    encode_ms=choice.result.seconds * 1000))
            except BudgetError:
                rows.append(DemoRow(name, frames, "classical", state="skipped",
                                    reason=f"no classical codec fits {frames} frame(s)"))
            console.print(f"  planned {name} @ {frames} frame(s): "
                          + ", ".join(f"{r.codec} {r.bytes or '-'} B" for r in rows[-2:]))
    return rows


def run_transfers(daemons: Daemons, rows: list[DemoRow], images: dict[str, np.ndarray], frame_size: int,
                  timeout_s: float, console: Any) -> None:
    """Submit every planned row to the sender and wait for the ground station's outputs."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    todo = [r for r in rows if r.state == "pending"]
    for r in todo:
        reply = request(daemons.ep["sender"], {
            "cmd": "send", "name": f"{r.image}-{r.frames_budget}f-{r.codec}.png",
            "image": png_bytes(images[r.image]), "codec": r.codec, "packets": r.frames_budget,
        })
        if not reply.get("ok"):
            r.state, r.reason = "refused", str(reply.get("error"))
            continue
        r.message_id, r.state = int(reply["id"]), "sent"
    pending = {r.message_id: r for r in todo if r.message_id is not None}
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("images delivered", total=len(pending), info="")
        while pending and time.monotonic() < deadline:
            daemons.check_alive()
            for mid in list(pending):
                meta = daemons.outbox / f"{mid}.json"
                if meta.exists():
                    pending.pop(mid).meta = json.loads(meta.read_text())
            status = request(daemons.ep["sender"], {"cmd": "status"}, timeout=5.0)
            by_id = {m["id"]: m for m in status.get("messages", [])}
            for r in todo:
                m = by_id.get(r.message_id)
                if m is not None:
                    r.retransmissions = m.get("retransmitted")
                    if m.get("state") in ("failed", "expired"):
                        r.state, r.reason = m["state"], m.get("reason")
                        pending.pop(r.message_id, None)
            fwd = link_stats(daemons.ep["link_control"]).get("forward", {})
            counters = status.get("counters", {})
            info = (f"frames on air {fwd.get('in', '?')}, delivered {fwd.get('delivered', '?')}, "
                    f"retransmitted {counters.get('retransmitted', 0)}")
            progress.update(task, completed=len(todo) - len(pending), info=info)
            time.sleep(0.5)
    for r in pending.values():
        r.state, r.reason = "timeout", f"not delivered within {timeout_s:.0f} s"


def _finish_rows(rows: list[DemoRow], images: dict[str, np.ndarray], outbox: Path, out: Path) -> None:
    from gateway.eval.metrics import ms_ssim, psnr

    rec_dir = out / "reconstructions"
    rec_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if not r.meta:
            continue
        m = r.meta
        rec = np.asarray(Image.open(outbox / m["png"]).convert("RGB"))
        dest = rec_dir / f"{r.image}-{r.frames_budget}f-{r.codec}.png"
        Image.fromarray(rec).save(dest)
        (rec_dir / f"{dest.stem}.json").write_text(json.dumps(m, indent=2))
        r.state, r.output_png = "delivered", str(dest.relative_to(out))
        r.frames, r.bytes, r.bpp = m.get("frames_total"), m.get("bitstream_bytes"), m.get("bpp")
        r.decode_ms = (m.get("timings") or {}).get("decode_s", 0) * 1000
        ref = images[r.image]
        r.psnr, r.ms_ssim = psnr(ref, rec), ms_ssim(ref, rec)


def _sheets(rows: list[DemoRow], images: dict[str, np.ndarray], budgets: list[int], out: Path) -> list[str]:
    names = []
    for frames in budgets:
        lines = []
        for name, img in images.items():
            cells: list[tuple[np.ndarray | None, str]] = [(img, f"{name} original")]
            for r in rows:
                if r.image == name and r.frames_budget == frames:
                    rec = np.asarray(Image.open(out / r.output_png).convert("RGB")) if r.output_png else None
                    label = f"{r.codec}: {r.bytes} B" if r.bytes else f"{r.codec}: {r.state}"
                    cells.append((rec, label))
            lines.append((name, cells))
        fname = f"contact-{frames}f.png"
        contact_sheet(lines, out / fname)
        names.append(fname)
    return names


def _print_table(rows: list[DemoRow], console: Any) -> None:
    from rich.table import Table

    table = Table(title="satgw demo: every transfer")
    for title, _, _ in COLUMNS:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*table_cells(r))
    console.print(table)


def _port_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw demo``."""
    from rich.console import Console

    p = argparse.ArgumentParser(prog="satgw demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", help="folder of images to send (default: scikit-image's sample photographs)")
    p.add_argument("--link", default="leo", help="link preset name or YAML (default: leo)")
    p.add_argument("--packets", type=int, action="append",
                   help="budget in frames; repeat for several (default: 1 and 4)")
    p.add_argument("--bundle", help="CADC model bundle folder (default: the embedded models, picked by the "
                   "budget's bits per pixel: gateway/bundles/ladder.yaml)")
    p.add_argument("--device", help="where the ground station decodes CADC: auto, cpu, cuda, cuda:N "
                   "(default: the receiver config's device, auto)")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated seconds per wall second (default 10)")
    p.add_argument("--limit", type=int, help="send only the first N images")
    p.add_argument("--timeout", type=float, default=600.0, help="wall seconds to wait for deliveries")
    p.add_argument("--web-port", type=int, default=8080,
                   help="loopback port of the live page (default 8080; another free one if it is taken)")
    a = p.parse_args(argv)

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops the demo the way Ctrl-C does: daemons shut down, partial report written.
    signal.signal(signal.SIGTERM, _interrupt)
    # A report table wants width; rich assumes 80 columns when stdout is not a terminal.
    console = Console(width=None if sys.stdout.isatty() else 160)
    budgets = sorted(set(a.packets or [1, 4]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    frame_size = 450

    from link_sim.presets import link_preset

    images = load_images(a.images, a.limit)
    cadc: Callable[[np.ndarray, Any], Any] | None
    try:  # the demo encodes here with the sender's models (its ladder); the ground decodes
        rungs = LadderModels(ladder_for(a.bundle, None), encoder_only=True)

        def cadc(img: np.ndarray, budget: Any) -> Any:
            return rungs.for_budget(budget, img.shape[1], img.shape[0])

        cadc_note = "cadc " + ", ".join(f"{rungs.models[r.bundle].model_id:04x} from {r.from_bpp:g} bpp"
                                        for r in rungs.ladder.rungs)
    except SatgwError as e:
        cadc, cadc_note = None, f"CADC unavailable, classical codecs only: {e}"
    console.print(f"[bold]satgw demo[/bold]: {len(images)} images x budgets {budgets} frames; {cadc_note}")
    console.print("encoding locally to pick the best classical backend per image and budget ...")
    rows = plan(images, budgets, cadc, frame_size, console)
    img_map = dict(images)

    web_port = a.web_port if _port_free(a.web_port) else None
    daemons = Daemons(out / "run", str(link_preset(a.link)), a.time_scale, a.bundle, metrics=True, web_port=web_port,
                      extra_args={"receiver": ["--device", a.device]} if a.device else None)
    console.print(f"starting link ({a.link}, time scale {a.time_scale:g}), ground station, sender and web page ...")
    interrupted = False
    everything = ("link", "receiver", "sender", "web")
    with ExitStack() as stack:
        stack.callback(daemons.stop)
        daemons.start(everything)
        daemons.wait_ready(everything)
        console.print(f"[bold green]live page: {daemons.web_url}[/bold green]  (open it to watch the pictures land)")
        console.print("metrics: " + ", ".join(f"{n} {u}" for n, u in daemons.metrics_url.items()))
        try:
            run_transfers(daemons, rows, img_map, frame_size, a.timeout, console)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: stopping the daemons[/yellow]")
        final_stats = link_stats(daemons.ep["link_control"])
    _finish_rows(rows, img_map, daemons.outbox, out)
    for name, img in images:
        Image.fromarray(img).save(out / f"original-{name}.png")
    sheets = _sheets(rows, img_map, budgets, out)
    info = {"link": a.link, "time_scale": a.time_scale, "budgets": budgets, "frame_size": frame_size,
            "codecs": cadc_note, "link_counters": json.dumps(final_stats.get("forward", {}))}
    index = write_index(out, rows, sheets, info)
    _print_table(rows, console)
    console.print(f"report: {index}")
    console.print(f"the live page again, from the files alone: satgw web --outbox {daemons.outbox} "
                  f"--store {daemons.run_dir / 'frames.db'} --receiver none --link-control none")
    delivered = sum(r.state == "delivered" for r in rows)
    console.print(f"{delivered}/{len(rows)} transfers delivered")
    if interrupted:
        return 130
    return 0 if delivered == sum(r.state != "skipped" for r in rows) else 1
