"""Benchmark the ground station's frame path: verify (CRC-32C) + commit to the frame store + reassemble.

This is what ``satgw receiver`` runs for every frame, with its own code and
settings: ``FrameCodec.unpack``, ``FrameStore.store_batch`` (SQLite WAL on
disk, ``store_synchronous`` and ``limits.max_batch_frames`` from
``configs/daemons/receiver.yaml``: FULL, i.e. an fsync per commit, and up to
256 frames per commit), and ``FrameStore.assemble`` (zfec erasure decoding
included) as soon as a message holds k frames. The sender side (split +
pack) runs before the clock starts. Two figures:

* ``batched``: a backlog arrives at once, so every commit carries the
  receiver's full batch: the ground path's throughput ceiling, which must
  stay well above the fastest link preset's frame rate (the target);
* ``per_frame``: one commit per frame, as when frames trickle in at link
  rate (the common case): its inverse is what one frame's fsync costs before
  it can be acknowledged. Frames that arrive faster than that are batched by
  the receiver, so this figure has no target; it is reported.

Not a test: run it by hand, on a quiet machine, e.g.
``python tools/bench_packetizer.py --messages 200 --size 30000``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from gateway.daemon.config import load_receiver_config
from gateway.paths import config_dir
from gateway.store.framestore import FrameStore
from packetizer.frame import FrameCodec
from packetizer.segment import split_message

#: The fastest shipped link preset (clean, 1 Mbit/s) delivers 1e6 / (450 * 8) = 278 frames/s; the ground
#: path's batched throughput must have ten times that as headroom.
CLEAN_LINK_FPS = 1_000_000 / (450 * 8)
TARGETS = {"batched": 10 * CLEAN_LINK_FPS}


def run_once(wire: list[list[bytes]], codec: FrameCodec, batch: int, synchronous: str, folder: Path,
             expected: list[bytes]) -> tuple[int, float]:
    """Feed the packed frames of every message through verify + store + assemble; return (frames, seconds)."""
    with tempfile.TemporaryDirectory(dir=folder) as d:
        store = FrameStore(Path(d) / "frames.db", synchronous=synchronous)
        stream = [f for frames in wire for f in frames]
        out: list[bytes] = []
        start = time.perf_counter()
        for i in range(0, len(stream), batch):
            res = store.store_batch([codec.unpack(raw) for raw in stream[i : i + batch]])
            for mid in sorted(res.ready):
                data = store.assemble(mid)
                if data is not None:
                    out.append(data)
        seconds = time.perf_counter() - start
        store.close()
    if out != expected:
        raise SystemExit("messages came back wrong: the benchmark is measuring a broken path")
    return len(stream), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="messages per batched run (default 200)")
    parser.add_argument("--size", type=int, default=30_000, help="bytes per message (default 30000, ~70 frames)")
    parser.add_argument("--frame-size", type=int, default=450)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one is reported")
    parser.add_argument("--auth", action="store_true", help="add an 8-byte HMAC-SHA256 tag to every frame")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder for the frame store (put it on the disk the ground station uses)")
    parser.add_argument("--config", type=Path, default=config_dir() / "daemons" / "receiver.yaml",
                        help="receiver config whose store_synchronous and limits.max_batch_frames are used")
    args = parser.parse_args(argv)

    cfg = load_receiver_config(args.config)
    batch, synchronous = cfg.limits.max_batch_frames, cfg.store_synchronous
    rnd = random.Random(0)
    messages = [rnd.randbytes(args.size) for _ in range(args.messages)]
    codec = FrameCodec(args.frame_size, auth_key=b"bench-key-0123456789" if args.auth else None)
    print(f"{codec}, payload {codec.payload_capacity} B, {args.messages} messages x {args.size} B; "
          f"frame store synchronous={synchronous}, WAL, in {args.dir}")
    figures: dict[str, float] = {}
    # (label, batch, parity, frames lost per message, share of the messages)
    runs = (("batched", batch, 0, 0, 1.0), ("batched, parity 4, 4 lost", batch, 4, 4, 1.0),
            ("per_frame", 1, 0, 0, 0.1))
    for label, size, parity, lost, share in runs:
        count = max(1, round(args.messages * share))
        wire = [[codec.pack(f) for f in split_message(mid, m, codec, parity)][lost:]
                for mid, m in enumerate(messages[:count])]
        best = max(frames / seconds for frames, seconds in
                   (run_once(wire, codec, size, synchronous, args.dir, messages[:count]) for _ in range(args.repeat)))
        figures[label] = round(best)
        note = f"; {1000 / best:.2f} ms per frame committed alone" if size == 1 else ""
        print(f"{label:26s} {best:10,.0f} frames/s  ({count} messages, {size} frame(s) per commit{note})")
    met = all(figures[k] >= t for k, t in TARGETS.items())
    print("targets: " + ", ".join(f"{k} >= {t:,.0f} frames/s" for k, t in TARGETS.items())
          + f" (the clean link's {CLEAN_LINK_FPS:.0f} frames/s): {'met' if met else 'NOT met'}")
    print("BENCH_JSON " + json.dumps({"frames_per_s": figures, "targets": {k: round(t) for k, t in TARGETS.items()},
                                      "synchronous": synchronous, "batch": batch, "met": met}))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
