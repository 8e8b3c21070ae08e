"""ACK frames: compact round trips, many messages per frame, oversized entries, statuses and reasons, garbage."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from packetizer.ack import MAX_ACK_INDICES, MAX_REASON_BYTES, AckEntry, AckStatus, pack_acks, unpack_acks
from packetizer.errors import FrameError, HeaderError
from packetizer.frame import Frame, FrameCodec, FrameType

CODEC = FrameCodec()


def round_trip(entries: list[AckEntry], codec: FrameCodec = CODEC) -> tuple[int, list[AckEntry]]:
    wire = pack_acks(entries, codec)
    assert all(len(w) == codec.frame_size for w in wire)
    frames = [codec.unpack(w) for w in wire]
    assert all(f.type == FrameType.ACK and f.message_id == 0 for f in frames)
    assert [f.index for f in frames] == list(range(len(frames))) and all(f.n == len(frames) for f in frames)
    return len(frames), [e for f in frames for e in unpack_acks(f)]


@st.composite
def ack_entries(draw, max_n: int = 300):
    n = draw(st.integers(0, max_n))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    style = draw(st.sampled_from(["all", "none", "random", "runs"]))
    if style == "all":
        received = frozenset(range(n))
    elif style == "none":
        received = frozenset()
    elif style == "random":
        received = frozenset(i for i in range(n) if rnd.random() < 0.5)
    else:
        received = frozenset(i for i in range(n) if (i // 17) % 3)
    status = draw(st.sampled_from(list(AckStatus)))
    if status != AckStatus.RECEIVING:
        received = frozenset()  # only a RECEIVING entry lists indices
    reason = draw(st.text(max_size=40)) if status == AckStatus.FAILED else None
    return AckEntry(draw(st.integers(0, 2**32 - 1)), n, received, status, reason)


@settings(max_examples=60, deadline=None)
@given(st.lists(ack_entries(), max_size=40), st.sampled_from([64, 128, 450, 1500]))
@example([AckEntry(0, 0, frozenset(), AckStatus.FAILED, "\U00010000" * 40)], 64)  # a reason longer than the frame
def test_entries_round_trip_exactly(entries: list[AckEntry], frame_size: int) -> None:
    codec = FrameCodec(frame_size)
    _, back = round_trip(entries, codec)
    # A FAILED entry's reason is cut (at a character boundary) to what one frame holds beside the entry.
    limit = min(MAX_REASON_BYTES, codec.payload_capacity - 8)
    entries = [replace(e, reason=e.reason.encode()[:limit].decode("utf-8", "ignore")) if e.reason else e
               for e in entries]
    assert merged(back) == merged(entries)
    if all(7 + (e.n + 7) // 8 <= codec.payload_capacity for e in entries):  # nothing needed windows
        assert sorted(back, key=entry_key) == sorted(entries, key=entry_key)


def entry_key(e: AckEntry) -> tuple:
    return (e.message_id, e.n, sorted(e.received), e.status, e.reason or "")


def merged(entries: list[AckEntry]) -> dict[tuple[int, int, AckStatus, str], set[int]]:
    """What a sender learns: per message and status, the union of the indices reported received."""
    out: dict[tuple[int, int, AckStatus, str], set[int]] = defaultdict(set)
    for e in entries:
        out[(e.message_id, e.n, e.status, e.reason or "")] |= e.received
    return dict(out)


def test_one_frame_acknowledges_many_messages() -> None:
    complete = [AckEntry(mid, 40, frozenset(), AckStatus.DONE) for mid in range(61)]
    frames, back = round_trip(complete)
    assert frames == 1 and back == complete  # 7 bytes per delivered message
    assert all(e.complete for e in back)
    partial = [AckEntry(mid, 64, frozenset(range(0, 64, 2))) for mid in range(28)]
    frames, back = round_trip(partial)
    assert frames == 1 and back == partial  # 15-byte bitmaps
    gaps = [AckEntry(mid, 64, frozenset(range(64)) - {10, 11, 50}) for mid in range(28)]
    frames, back = round_trip(gaps)
    assert frames == 1 and back == gaps  # the 8-byte bitmap beats 3 runs (13 bytes) at n=64
    mixed = complete + partial + gaps
    frames, back = round_trip(mixed)
    assert frames == 3 and sorted(back, key=entry_key) == sorted(mixed, key=entry_key)


def test_runs_beat_bitmaps_for_long_messages() -> None:
    entry = AckEntry(1, 2428, frozenset(range(2428)) - {5, 6, 2000})  # a 1 MiB message, 3 lost
    wire = pack_acks([entry], CODEC)
    frame = CODEC.unpack(wire[0])
    assert len(frame.payload) == 7 + 1 + 3 * 4
    assert unpack_acks(frame) == [entry]


def test_an_entry_bigger_than_a_frame_is_split_into_windows() -> None:
    entry = AckEntry(77, 65535, frozenset(range(0, 65535, 3)))
    frames, back = round_trip([entry])
    assert frames > 1
    assert all(e.message_id == 77 and e.n == 65535 for e in back)
    assert frozenset().union(*(e.received for e in back)) == entry.received


def test_pack_rejects_impossible_entries() -> None:
    with pytest.raises(HeaderError):
        pack_acks([AckEntry(1, 4, frozenset({4}))], CODEC)
    with pytest.raises(HeaderError):
        pack_acks([AckEntry(1, 70000, frozenset())], CODEC)
    with pytest.raises(HeaderError):
        pack_acks([AckEntry(2**32, 1, frozenset())], CODEC)
    with pytest.raises(HeaderError):
        pack_acks([AckEntry(1, 1, frozenset(), 7)], CODEC)  # type: ignore[arg-type]
    assert pack_acks([], CODEC) == []


def test_held_done_and_failed_say_what_became_of_a_message() -> None:
    entries = [
        AckEntry(1, 5, frozenset({0, 3})),
        AckEntry(2, 5, frozenset(), AckStatus.HELD),
        AckEntry(3, 5, frozenset(), AckStatus.DONE),
        AckEntry(4, 5, frozenset(), AckStatus.FAILED, "BitstreamError: payload checksum 1f2e != header 0000"),
    ]
    frames, back = round_trip(entries)
    assert frames == 1 and back == entries
    assert [e.complete for e in back] == [False, False, True, False]


def test_a_failed_entrys_reason_is_cut_at_a_character_boundary() -> None:
    long = "é" * 200  # 400 bytes of UTF-8
    _, back = round_trip([AckEntry(9, 1, frozenset(), AckStatus.FAILED, long)])
    assert back[0].status == AckStatus.FAILED and back[0].reason == "é" * (MAX_REASON_BYTES // 2)


def test_status_entries_with_a_body_encoding_or_a_truncated_reason_are_refused() -> None:
    head = (1).to_bytes(4, "big") + (3).to_bytes(2, "big")
    with pytest.raises(HeaderError, match="no body encoding"):
        unpack_acks(Frame(FrameType.ACK, 0, 0, 1, 1, head + bytes([int(AckStatus.DONE) | 1 << 2])))
    with pytest.raises(HeaderError, match="reason"):
        unpack_acks(Frame(FrameType.ACK, 0, 0, 1, 1, head + bytes([int(AckStatus.FAILED), 10]) + b"short"))
    with pytest.raises(HeaderError, match="flag bits"):
        unpack_acks(Frame(FrameType.ACK, 0, 0, 1, 1, head + b"\x10"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=432))
def test_garbage_ack_payloads_raise_only_header_errors(payload: bytes) -> None:
    try:
        entries = unpack_acks(Frame(FrameType.ACK, 0, 0, 1, 1, payload))
    except HeaderError:
        return
    assert sum(len(e.received) for e in entries) <= MAX_ACK_INDICES
    assert all(max(e.received, default=-1) < e.n for e in entries)


def test_forged_ack_cannot_blow_up_memory() -> None:
    all_flags = b"".join(mid.to_bytes(4, "big") + b"\xff\xff\x00" for mid in range(61))  # 61 x 65535 indices
    with pytest.raises(HeaderError, match="indices"):
        unpack_acks(Frame(FrameType.ACK, 0, 0, 1, 1, all_flags))
    with pytest.raises(FrameError):
        unpack_acks(Frame(FrameType.DATA, 0, 0, 1, 1, b""))
    truncated = (1).to_bytes(4, "big") + b"\x00\x10\x04"  # bitmap of 16 bits with no bytes
    with pytest.raises(HeaderError):
        unpack_acks(Frame(FrameType.ACK, 0, 0, 1, 1, truncated))
