"""End-to-end images per hour over the GEO and LEO presets, with the real daemons.

Runs link, ground station and sender on loopback (time-scaled), sends N images
at a budget of P frames and waits until the ground station has written every
one.  Two figures per preset:

* link-limited images/hour: the link's frame capacity divided by the frames
  that really went on the air per delivered image (data, parity, META and
  retransmissions, counted from the link's trace), times the share of time
  the link is up (LEO passes);
* encode-limited images/hour: 3600 / the sender's mean rate-controlled encode
  time (wall seconds on this machine).

The end-to-end figure is the smaller of the two.  Usage::

    python tools/bench_e2e.py [--images 8] [--packets 4] [--codec cadc|avif] [--presets geo,leo]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gateway.codec.image_io import png_bytes
from gateway.eval.launcher import Daemons, request
from link_sim.config import load_link_config
from link_sim.presets import link_preset

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def _images(n: int) -> list[tuple[str, np.ndarray]]:
    files = sorted(KODAK.glob("kodim*.png"))[:n]
    if files:
        return [(f.name, np.asarray(Image.open(f).convert("RGB"))) for f in files]
    import skimage.data

    names = ["astronaut", "coffee", "chelsea", "rocket"]
    return [(f"{names[i % 4]}-{i}.png", getattr(skimage.data, names[i % 4])()[..., :3]) for i in range(n)]


def _duty(cfg) -> float:
    """Share of time the link is up, measured over one long horizon."""
    horizon, t, up = 10 * 86400.0, 0.0, 0.0
    while t < horizon:
        nxt = cfg.availability.next_change(t)
        end = min(horizon, nxt if nxt is not None else horizon)
        if cfg.availability.is_up(t):
            up += end - t
        t = end if end > t else horizon
    return up / horizon


def run_preset(preset: str, images: list[tuple[str, np.ndarray]], packets: int, codec: str,
               time_scale: float, bundle: str | None, timeout: float) -> dict:
    """Send every image through one preset; returns the figures."""
    cfg = load_link_config(link_preset(preset))
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_e2e_{preset}_"))
    daemons = Daemons(run_dir, str(link_preset(preset)), time_scale, bundle)
    daemons.start()
    try:
        ids = []
        for name, img in images:
            reply = request(daemons.ep["sender"], {"cmd": "send", "name": name, "image": png_bytes(img),
                                                   "codec": codec, "packets": packets})
            if not reply.get("ok"):
                raise SystemExit(f"sender refused {name}: {reply.get('error')}")
            ids.append(reply["id"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            daemons.check_alive()
            if all((daemons.outbox / f"{i}.json").exists() for i in ids):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"{preset}: not every image arrived within {timeout:.0f} s (see {run_dir})")
    finally:
        daemons.stop()
    trace = [json.loads(line) for line in (run_dir / "link-trace.jsonl").read_text().splitlines()]
    frames_on_air = sum(1 for r in trace if r.get("dir") == "forward")
    metas = [json.loads((daemons.outbox / f"{i}.json").read_text()) for i in ids]
    encode_s = []
    for line in (run_dir / "sender.log").read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "encoded" and "seconds" in rec:
            encode_s.append(float(rec["seconds"]))
    capacity_per_h = 3600 * cfg.forward.rate_bps / (8 * cfg.forward.frame_size)
    duty = _duty(cfg)
    link_iph = capacity_per_h / (frames_on_air / len(ids)) * duty
    enc_iph = 3600 / (sum(encode_s) / len(encode_s)) if encode_s else float("inf")
    return {
        "preset": preset, "codec": codec, "packets": packets, "images": len(ids),
        "frames_on_air_per_image": round(frames_on_air / len(ids), 2),
        "mean_bytes": round(sum(m["bitstream_bytes"] for m in metas) / len(metas), 1),
        "link_duty": round(duty, 4), "link_limited_images_per_hour": round(link_iph, 1),
        "mean_encode_s": round(sum(encode_s) / len(encode_s), 3) if encode_s else None,
        "encode_limited_images_per_hour": round(enc_iph, 1),
        "images_per_hour": round(min(link_iph, enc_iph), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--packets", type=int, default=4)
    p.add_argument("--codec", default="cadc", help="codec the sender uses (default cadc; avif etc. for a peer)")
    p.add_argument("--presets", default="geo,leo")
    p.add_argument("--time-scale", type=float, default=20.0)
    p.add_argument("--bundle", help="CADC bundle folder (default: the embedded cadc-tiny)")
    p.add_argument("--timeout", type=float, default=900.0, help="wall seconds per preset")
    a = p.parse_args(argv)
    images = _images(a.images)
    rows = [run_preset(pr, images, a.packets, a.codec, a.time_scale, a.bundle, a.timeout)
            for pr in a.presets.split(",")]
    print(f"{'preset':6} {'codec':6} {'frames/img':>10} {'link img/h':>11} {'enc s':>7} {'enc img/h':>10} {'img/h':>8}")
    for r in rows:
        print(f"{r['preset']:6} {r['codec']:6} {r['frames_on_air_per_image']:>10} "
              f"{r['link_limited_images_per_hour']:>11} {r['mean_encode_s'] or '-':>7} "
              f"{r['encode_limited_images_per_hour']:>10} {r['images_per_hour']:>8}")
    print("BENCH_JSON " + json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
