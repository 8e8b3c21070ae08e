"""Previews over a cut pass and a lossy link: pictures on the ground with and without ``preview_first``.

The link simulator runs in-process on a virtual clock (no sockets, no sleeps)
between the sender's own sans-IO scheduling (``TransmitScheduler``, ``Pacer``,
``RtoEstimator``, with the sender daemon's RTO bounds) and a ground model that
does what ``satgw receiver`` does: stores frames, acknowledges them paced at
the return rate (HELD after assembly, DONE once decoded; periodic re-ACKs),
waits for META, and decodes on one worker, complete pictures first and
previews only when it is idle, with the real ``PreviewPlanner`` (quiet time,
pass end) and CADC's real ``prefix_layers`` on the real bitstreams. A decode
takes ``--decode-s`` link seconds (measured once on this machine with
``--measure-decode``). The pictures are the first images of Kodak, rate
controlled with cadc-tiny to ``--frames`` frames each.

1. LEO (``configs/links/leo.yaml``: 9.6 kbit/s, bursty 5 % loss), a queue of
   ``--images`` images; the first pass is cut at a random point of the
   transfer (``--seeds`` seeds: the cut and the link's fates). Counted after
   the pass: images complete (all-or-nothing delivery) and images with some
   picture (previews on), in the sender's default order and with
   ``preview_first``; the mean PSNR of what is on the ground. Then one whole
   pass: the time from its start to each image's first picture.
2. harsh (2.4 kbit/s GEO, 20 % loss in bursts of ~8 frames): images with one
   parity frame, so a burst is more than parity covers. Of the images with a
   frame the sender had to send again, the share that had a preview on the
   ground before their complete picture, and how much earlier.

Usage::

    python tools/bench_previews.py [--images 20] [--frames 4] [--seeds 10] [--quiet-s 10,3] [--no-quality]

Prints tables and a ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from gateway.ground.previews import PreviewPlanner, intact_prefix_length
from gateway.protocol.meta import MessageMeta
from gateway.protocol.pacer import Pacer
from gateway.protocol.rto import RtoEstimator
from gateway.protocol.selective_repeat import META_INDEX, TransmitScheduler
from gateway.transport.contact_plan import AlwaysUp, Windows
from link_sim.clock import VirtualClock
from link_sim.config import load_link_config
from link_sim.link import FORWARD, RETURN, Link
from link_sim.presets import link_preset
from packetizer.ack import AckEntry, AckStatus, pack_acks, unpack_acks
from packetizer.errors import PacketizerError
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.segment import split_message

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
CODEC = FrameCodec(450)
ACK_INTERVAL_S, ACK_ACTIVE_S, META_GRACE_S = 1.0, 60.0, 300.0  # the receiver's defaults (link seconds)


@dataclasses.dataclass
class Image:
    """One queued picture: its bitstream, and the layers each intact prefix of j data frames holds."""

    name: str
    pixels: np.ndarray
    bitstream: bytes
    parity: int
    layers_at: dict[int, int]  # j -> layers decodable from data frames 0..j-1


@dataclasses.dataclass
class Fate:
    """What became of one image in one run (link seconds from the start of the pass)."""

    first_picture: float | None = None
    first_frames: int = 0  # data frames of the first picture
    preview_at: float | None = None
    complete_at: float | None = None
    retransmitted: bool = False
    frames_on_ground: int = 0  # the intact prefix of the last picture written


class Ground:
    """The ground station's behaviour, without sockets: frame store, ACKs, META waits, one decode worker."""

    def __init__(self, images: dict[int, Image], codec, *, previews: bool, quiet_s: float, decode_s: float,
                 return_frame_s: float) -> None:
        self.images, self.codec = images, codec
        self.previews, self.quiet_s, self.decode_s = previews, quiet_s, decode_s
        self.ack_pacer = Pacer(return_frame_s, burst=2)
        self.got: dict[int, dict[int, Frame]] = {m: {} for m in images}
        self.meta: set[int] = set()
        self.last_frame: dict[int, float] = {}
        self.ready_at: dict[int, float] = {}
        self.state = dict.fromkeys(images, "receiving")
        self.to_ack: set[int] = set()
        self.ack_queue: list[bytes] = []
        self.next_periodic = 0.0
        self.planner = PreviewPlanner()
        self.complete_jobs: list[int] = []
        self.busy: tuple[float, int, str, int] | None = None  # (done at, message, kind, frames)
        self.tried: dict[int, int] = {}
        self.shown_layers: dict[int, int] = {}
        self.fates = {m: Fate() for m in images}

    def receive(self, data: bytes, t: float) -> None:
        try:
            f = CODEC.unpack(data)
        except PacketizerError:
            return  # CRC: a bit error on the link
        mid = f.message_id
        if mid not in self.images:
            return
        if self.state[mid] != "receiving":
            self.to_ack.add(mid)
            return
        if f.type == FrameType.META:
            self.meta.add(mid)
        elif f.index not in self.got[mid]:
            self.got[mid][f.index] = f
            self.last_frame[mid] = t
            if self.previews:
                self.planner.touch(mid, t + self.quiet_s)
        self.to_ack.add(mid)
        k = f.k
        if len(self.got[mid]) >= k:
            self.ready_at.setdefault(mid, t)
            if mid in self.meta or t - self.ready_at[mid] >= META_GRACE_S:
                self._assemble(mid)

    def _assemble(self, mid: int) -> None:
        self.state[mid] = "assembled"
        self.planner.forget(mid)
        self.complete_jobs.append(mid)

    def pass_ended(self, t: float) -> None:
        if self.previews:
            self.planner.force_all(t)

    def tick(self, t: float) -> None:
        for mid, since in list(self.ready_at.items()):
            if self.state[mid] == "receiving" and t - since >= META_GRACE_S:
                self._assemble(mid)
        if self.busy is not None and t >= self.busy[0]:
            self._finish(*self.busy)
            self.busy = None
        if self.previews:
            self.planner.due(t)
        if self.busy is None:
            if self.complete_jobs:
                mid = self.complete_jobs.pop(0)
                self.busy = (t + self.decode_s, mid, "complete", len(self.got[mid]))
            else:
                while (mid := self.planner.pop_ready()) is not None:
                    k = self._k(mid)
                    j = intact_prefix_length(self.got[mid], k)
                    self.planner.idle(mid)
                    if j <= self.tried.get(mid, 0) or j < 1:
                        continue
                    self.tried[mid] = j
                    if self.images[mid].layers_at[j] <= self.shown_layers.get(mid, 0):
                        continue  # nothing new to show: no decode
                    self.busy = (t + self.decode_s, mid, "preview", j)
                    break
        self._acks(t)

    def _k(self, mid: int) -> int:
        return next(iter(self.got[mid].values())).k

    def _finish(self, t: float, mid: int, kind: str, frames: int) -> None:
        fate = self.fates[mid]
        if kind == "complete":
            self.state[mid] = "done"
            fate.complete_at = t
            self.to_ack.add(mid)
            frames = self._k(mid)
        else:
            if self.state[mid] != "receiving":
                return
            fate.preview_at = fate.preview_at if fate.preview_at is not None else t
            self.shown_layers[mid] = self.images[mid].layers_at[frames]
        if fate.first_picture is None:
            fate.first_picture, fate.first_frames = t, frames
        fate.frames_on_ground = frames

    def _acks(self, t: float) -> None:
        if t >= self.next_periodic:
            self.to_ack |= {m for m, s in self.state.items()
                            if (s == "receiving" and t - self.last_frame.get(m, -1e9) <= ACK_ACTIVE_S)
                            or (s == "done" and t - (self.fates[m].complete_at or -1e9) <= 3 * ACK_INTERVAL_S)}
            self.next_periodic = t + ACK_INTERVAL_S
        if not self.ack_queue and self.to_ack:
            entries = []
            for mid in sorted(self.to_ack):
                frames = self.got[mid]
                n = next(iter(frames.values())).n if frames else None
                if n is None:
                    continue
                status = {"receiving": AckStatus.RECEIVING, "assembled": AckStatus.HELD,
                          "done": AckStatus.DONE}[self.state[mid]]
                received = frozenset(frames) if status == AckStatus.RECEIVING else frozenset()
                entries.append(AckEntry(mid, n, received, status))
            self.to_ack.clear()
            self.ack_queue.extend(pack_acks(entries, CODEC))

    def next_ack(self, t: float) -> bytes | None:
        if self.ack_queue and self.ack_pacer.ready(t):
            self.ack_pacer.sent(t)
            return self.ack_queue.pop(0)
        return None


class Sender:
    """The sender daemon's transmit side: its scheduler, pacing, RTO bounds and ACK digestion."""

    def __init__(self, images: dict[int, Image], *, preview_first: bool, frame_s: float, return_frame_s: float,
                 fates: dict[int, Fate]) -> None:
        physics = frame_s + return_frame_s
        self.rto = RtoEstimator(max(4.0, 3 * physics), max(0.2, 1.5 * physics), 120.0)
        self.sched = TransmitScheduler(self.rto, reorder_frames=2, max_transmissions=50, preview_first=preview_first)
        self.pacer = Pacer(frame_s, burst=1)
        self.frame_s = frame_s
        self.frames: dict[int, dict[int, bytes]] = {}
        self.fates = fates
        for i, (mid, img) in enumerate(images.items()):
            frames = split_message(mid, img.bitstream, CODEC, img.parity)
            k, n = frames[0].k, frames[0].n
            meta = Frame(FrameType.META, mid, 0, k, n, MessageMeta(img.name, 0, "cadc", 0.0).pack(CODEC.payload_capacity))
            self.frames[mid] = {f.index: CODEC.pack(f) for f in frames} | {META_INDEX: CODEC.pack(meta)}
            self.sched.add(mid, priority=0, created=float(i), n=n, k=k)

    def transmit(self, t: float, up_until: float, link: Link) -> None:
        while t + 2 * self.frame_s < up_until and self.pacer.ready(t):
            pick = self.sched.next(t)
            if pick is None:
                return
            link.offer(FORWARD, self.frames[pick.message_id][pick.index])
            if pick.retransmission and pick.index != META_INDEX and not self.sched.is_held(pick.message_id):
                self.fates[pick.message_id].retransmitted = True
            self.sched.sent(pick.message_id, pick.index, t)
            self.pacer.sent(t)

    def on_ack(self, data: bytes, t: float) -> None:
        try:
            entries = unpack_acks(CODEC.unpack(data))
        except PacketizerError:
            return
        for e in entries:
            out = self.sched.on_ack(e.message_id, e.n, e.received, e.status, t)
            if out.complete:
                self.sched.remove(e.message_id)

    def next_time(self, t: float) -> float | None:
        dl = self.sched.next_deadline(t)
        if dl is None:
            return None
        return max(dl, t + self.pacer.wait(t))


def simulate(preset: str, images: dict[int, Image], codec, *, seed: int, preview_first: bool, previews: bool,
             quiet_s: float, decode_s: float, cut: float | None, horizon: float) -> dict[int, Fate]:
    """One run; with ``cut`` the pass ends then (the ground previews what it has), else the link stays up."""
    cfg = load_link_config(link_preset(preset))
    cfg = dataclasses.replace(cfg, availability=Windows([(0.0, cut)]) if cut is not None else AlwaysUp(), seed=seed)
    clock = VirtualClock()
    link = Link(cfg, clock, seed=seed)
    frame_s = 8 * CODEC.frame_size / cfg.forward.rate_bps
    return_s = 8 * CODEC.frame_size / cfg.ret.rate_bps
    ground = Ground(images, codec, previews=previews, quiet_s=quiet_s, decode_s=decode_s, return_frame_s=return_s)
    sender = Sender(images, preview_first=preview_first, frame_s=frame_s, return_frame_s=return_s,
                    fates=ground.fates)
    t, was_up, step = 0.0, True, min(frame_s, return_s) / 8
    while t <= horizon:
        clock.set(t)
        up = cfg.availability.is_up(t)
        if was_up and not up:
            ground.pass_ended(t)
        was_up = up
        for direction, d in link.poll():
            (ground.receive if direction == FORWARD else sender.on_ack)(d.data, t)
        ground.tick(t)
        if up:
            nxt = cfg.availability.next_change(t)
            sender.transmit(t, float("inf") if nxt is None else nxt, link)
            ack = ground.next_ack(t)
            if ack is not None:
                link.offer(RETURN, ack)
        if all(f.complete_at is not None for f in ground.fates.values()):
            break
        if not up and ground.busy is None and not ground.complete_jobs and not ground.planner.queued() \
                and link.next_due() is None and (ground.planner.next_due() or float("inf")) > horizon:
            break  # the pass is over and the ground has nothing left to do
        t += step
    return ground.fates


def encode_images(count: int, frames: int, parity: int, codec) -> list[tuple[str, np.ndarray, bytes]]:
    """The first ``count`` Kodak images (or scikit-image photos), rate controlled to ``frames`` frames."""
    from PIL import Image as PILImage

    from gateway.ratecontrol import Budget, fit

    files = sorted(KODAK.glob("kodim*.png"))[:count]
    if files:
        pics = [(f.name, np.asarray(PILImage.open(f).convert("RGB"))) for f in files]
    else:
        import skimage.data

        names = ["astronaut", "coffee", "chelsea", "rocket"]
        pics = [(f"{names[i % 4]}-{i}", getattr(skimage.data, names[i % 4])()[..., :3]) for i in range(count)]
    out = []
    for name, px in pics:
        bits = fit(codec, px, Budget.for_frames(frames, CODEC, parity)).bitstream
        out.append((name, px, bits))
    return out


def as_images(encoded: list[tuple[str, np.ndarray, bytes]], parity: int, codec) -> dict[int, Image]:
    out = {}
    cap = CODEC.payload_capacity
    for i, (name, px, bits) in enumerate(encoded):
        k = max(1, -(-len(bits) // cap))
        layers = {0: 0} | {j: codec.prefix_layers(bits[: j * cap] if j < k else bits)[0] for j in range(1, k + 1)}
        out[1000 + i] = Image(name, px, bits, parity, layers)
    return out


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values):.1f} (min {min(values):g}, max {max(values):g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--frames", type=int, default=4, help="frames per image (LEO: no parity)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--quiet-s", default="10,3", help="the ground's previews.quiet_s values to try (link seconds)")
    ap.add_argument("--decode-s", type=float, default=0.5, help="link seconds one decode takes on the ground")
    ap.add_argument("--measure-decode", action="store_true", help="use this machine's cadc-tiny decode time")
    ap.add_argument("--harsh-images", type=int, default=None, help="images on the harsh link (default: --images)")
    ap.add_argument("--no-quality", action="store_true", help="skip decoding what is on the ground (PSNR)")
    ap.add_argument("--bundle", help="CADC bundle folder (default: the embedded cadc-tiny)")
    a = ap.parse_args(argv)

    import torch

    from gateway.codec.registry import get_codec
    from gateway.eval.metrics import psnr

    torch.set_num_threads(1)
    codec = get_codec("cadc", a.bundle, device="cpu")
    t0 = time.perf_counter()
    leo_enc = encode_images(a.images, a.frames, 0, codec)
    harsh_enc = encode_images(a.harsh_images or a.images, a.frames + 1, 1, codec)
    print(f"encoded {len(leo_enc) + len(harsh_enc)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    leo = as_images(leo_enc, 0, codec)
    harsh = as_images(harsh_enc, 1, codec)
    decode_s = a.decode_s
    if a.measure_decode:
        bits = next(iter(leo.values())).bitstream
        t1 = time.perf_counter()
        codec.decode_with_info(bits[: CODEC.payload_capacity], partial=True)
        decode_s = time.perf_counter() - t1
    quiets = [float(q) for q in a.quiet_s.split(",")]
    k_frames = statistics.fmean(-(-len(i.bitstream) // CODEC.payload_capacity) for i in leo.values())
    first_layers = statistics.fmean(i.layers_at[1] for i in leo.values())
    print(f"LEO: {len(leo)} images, {k_frames:.2f} data frames each on average; frame 0 alone holds "
          f"{first_layers:.2f} of 5 layers; a decode takes {decode_s:.2f} link s", flush=True)

    psnr_cache: dict[tuple[int, int], float] = {}

    def quality(images: dict[int, Image], fates: dict[int, Fate]) -> list[float]:
        out = []
        for mid, f in fates.items():
            if f.first_picture is None or a.no_quality:
                continue
            img, j = images[mid], f.frames_on_ground
            if (mid, j) not in psnr_cache:
                cap = CODEC.payload_capacity
                decoded, _ = codec.decode_with_info(img.bitstream[: j * cap] if j * cap < len(img.bitstream)
                                                    else img.bitstream, partial=True)
                psnr_cache[(mid, j)] = psnr(img.pixels, decoded)
            out.append(psnr_cache[(mid, j)])
        return out

    # 1. LEO, the pass cut at random points of the transfer.
    frame_s = 8 * 450 / 9600
    full_transfer = sum(-(-len(i.bitstream) // CODEC.payload_capacity) + 1 for i in leo.values()) * frame_s
    modes = [("all-or-nothing, default order", False, False), ("all-or-nothing, preview_first", True, False),
             ("previews, default order", False, True), ("previews + preview_first", True, True)]
    cut_rows: dict[str, dict[str, list[float]]] = {}
    for q in quiets:
        for label, pf, pv in modes:
            if not pv and q != quiets[0]:
                continue
            key = label if not pv else f"{label}, quiet {q:g} s"
            row = cut_rows.setdefault(key, {"pictures": [], "complete": [], "psnr": []})
            for seed in range(a.seeds):
                rng = np.random.default_rng(1000 + seed)
                cut = float(rng.uniform(0.1, 1.0) * full_transfer)
                fates = simulate("leo", leo, codec, seed=seed, preview_first=pf, previews=pv, quiet_s=q,
                                 decode_s=decode_s, cut=cut, horizon=cut + 120.0)
                row["pictures"].append(sum(1 for f in fates.values() if f.first_picture is not None))
                row["complete"].append(sum(1 for f in fates.values() if f.complete_at is not None))
                row["psnr"].extend(quality(leo, fates))
            print(f"  {key}: done", flush=True)
    print(f"\nLEO, {len(leo)} images x {a.frames} frames, the first pass cut uniformly in "
          f"[0.1, 1] x {full_transfer:.1f} s (one round of every frame), {a.seeds} seeds:")
    print("| mode | images with a picture after the pass | complete | PSNR of what is on the ground (dB) |")
    print("|---|---|---|---|")
    for key, row in cut_rows.items():
        print(f"| {key} | {_spread(row['pictures'])} | {_spread(row['complete'])} | "
              f"{statistics.fmean(row['psnr']):.2f} |" if row["psnr"] else
              f"| {key} | {_spread(row['pictures'])} | {_spread(row['complete'])} | – |")

    # Time to first picture over one whole pass.
    ttfp: dict[str, list[float]] = {}
    for q in quiets:
        for label, pf, pv in modes:
            if not pv and q != quiets[0]:
                continue
            key = label if not pv else f"{label}, quiet {q:g} s"
            times = []
            for seed in range(min(a.seeds, 3)):
                fates = simulate("leo", leo, codec, seed=seed, preview_first=pf, previews=pv, quiet_s=q,
                                 decode_s=decode_s, cut=None, horizon=600.0)
                times += [f.first_picture for f in fates.values() if f.first_picture is not None]
            ttfp[key] = times
    print(f"\nTime from the start of the pass to each image's first picture (LEO, uncut, {min(a.seeds, 3)} seeds), "
          "link s:")
    print("| mode | mean | median | 90th pct | last |")
    print("|---|---|---|---|---|")
    for key, times in ttfp.items():
        ts = sorted(times)
        print(f"| {key} | {statistics.fmean(ts):.1f} | {statistics.median(ts):.1f} | "
              f"{ts[int(0.9 * (len(ts) - 1))]:.1f} | {ts[-1]:.1f} |")

    # 2. harsh: loss beyond what one parity frame covers.
    harsh_rows: dict[str, dict[str, float]] = {}
    for q in quiets:
        for label, pf in (("default order", False), ("preview_first", True)):
            key = f"{label}, quiet {q:g} s"
            needed = early = 0
            gains = []
            for seed in range(min(a.seeds, 3)):
                fates = simulate("harsh", harsh, codec, seed=seed, preview_first=pf, previews=True, quiet_s=q,
                                 decode_s=decode_s, cut=None, horizon=4 * 3600.0)
                for f in fates.values():
                    if f.retransmitted:
                        needed += 1
                        if f.preview_at is not None and (f.complete_at is None or f.preview_at < f.complete_at):
                            early += 1
                            if f.complete_at is not None:
                                gains.append(f.complete_at - f.preview_at)
            harsh_rows[key] = {"needed_retransmission": needed, "preview_first": early,
                               "share": early / needed if needed else float("nan"),
                               "median_lead_s": statistics.median(gains) if gains else float("nan")}
    print(f"\nharsh, {len(harsh)} images x ({a.frames} data + 1 parity) frames, {min(a.seeds, 3)} seeds: images with a "
          "frame sent again (the loss beat the parity frame, or an ACK was lost), and those of them with a preview "
          "on the ground before their complete picture:")
    print("| mode | images with a frame sent again | previewed first | share | median lead of the preview (link s) |")
    print("|---|---|---|---|---|")
    for key, r in harsh_rows.items():
        print(f"| {key} | {r['needed_retransmission']} | {r['preview_first']} | {r['share']:.2f} | "
              f"{r['median_lead_s']:.1f} |")
    summary = {
        "images": len(leo), "frames": a.frames, "seeds": a.seeds, "decode_s": decode_s,
        "leo_cut": {k: {"pictures_mean": statistics.fmean(v["pictures"]), "complete_mean": statistics.fmean(v["complete"]),
                        "psnr_mean": statistics.fmean(v["psnr"]) if v["psnr"] else None} for k, v in cut_rows.items()},
        "leo_time_to_first_picture": {k: {"mean": statistics.fmean(v), "median": statistics.median(v), "last": max(v)}
                                      for k, v in ttfp.items()},
        "harsh": harsh_rows,
    }
    print("BENCH_JSON " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
