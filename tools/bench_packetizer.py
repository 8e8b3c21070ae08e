"""Benchmark the frame layer: split + pack (CRC-32C) + unpack + reassemble, in one process.

Prints frames per second for 450-byte frames (the link's size) and whether
the 100,000 frames/s target is met. Not a test: run it by hand, on a quiet
machine, e.g. ``python tools/bench_packetizer.py --messages 200 --size 30000``.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from packetizer.frame import FrameCodec
from packetizer.reassembly import Reassembler
from packetizer.segment import split_message

TARGET_FPS = 100_000


def run_once(messages: list[bytes], codec: FrameCodec, parity: int, drop: int) -> tuple[int, float]:
    """Send every message through the whole frame path; return (frames, seconds)."""
    reassembler = Reassembler()
    pack, unpack, add = codec.pack, codec.unpack, reassembler.add
    frames = 0
    start = time.perf_counter()
    for mid, message in enumerate(messages):
        wire = [pack(f) for f in split_message(mid, message, codec, parity)]
        # With parity, lose the first `drop` data frames so the erasure decoder really runs.
        for data in wire[drop:]:
            out = add(unpack(data))
        frames += len(wire)
        if out != message:
            raise SystemExit(f"message {mid} came back wrong: the benchmark is measuring a broken path")
    return frames, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="messages per run (default 200)")
    parser.add_argument("--size", type=int, default=30_000, help="bytes per message (default 30000, ~70 frames)")
    parser.add_argument("--frame-size", type=int, default=450)
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best one is reported")
    parser.add_argument("--auth", action="store_true", help="add an 8-byte HMAC-SHA256 tag to every frame")
    args = parser.parse_args(argv)

    rnd = random.Random(0)
    messages = [rnd.randbytes(args.size) for _ in range(args.messages)]
    codec = FrameCodec(args.frame_size, auth_key=b"bench-key" if args.auth else None)
    print(f"{codec}, payload {codec.payload_capacity} B, {args.messages} messages x {args.size} B")
    met = True
    figures: dict[str, float] = {}
    for label, parity, drop in (("plain", 0, 0), ("parity 4, 4 lost", 4, 4)):
        if parity and -(-args.size // codec.payload_capacity) + parity > 256:
            print(f"{label:18s} skipped: more than 256 frames per message")
            continue
        best = max(
            frames / seconds for frames, seconds in (run_once(messages, codec, parity, drop) for _ in range(args.repeat))
        )
        figures[label] = round(best)
        print(f"{label:18s} {best:12,.0f} frames/s  ({best * codec.frame_size * 8 / 1e6:,.0f} Mbit/s of frames)")
        if parity == 0:
            met = best >= TARGET_FPS
    print(f"target {TARGET_FPS:,} frames/s (plain path): {'met' if met else 'NOT met'}")
    print("BENCH_JSON " + json.dumps({"frames_per_s": figures, "target": TARGET_FPS, "met": met}))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
