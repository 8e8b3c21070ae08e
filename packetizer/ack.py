"""ACK frames: per message, which frame indices arrived, or what became of the message.

One ACK frame carries as many entries as fit. Each entry is::

    message_id u32 | n u16 | flags u8 | body

``flags`` bits 0-1 are the entry's :class:`AckStatus`; bits 2-3 pick the body
encoding of a RECEIVING entry (the smallest one is chosen per entry; 0 for
every other status); bits 4-7 are zero:

* RECEIVING (0): the message is still being received; the body says which
  indices arrived:

  * ALL (0): no body; every index 0..n-1 arrived.
  * BITMAP (1): ceil(n/8) bytes; bit i (LSB-first within byte i // 8) is index i.
  * RUNS (2): count u8, then count x (start u16, length u16) runs of arrived indices.
  * WINDOW (3): base u16, nbits u16, ceil(nbits/8) bitmap bytes for indices
    base..base+nbits-1. Used only when one entry's bitmap does not fit a frame;
    the entry is then sent as several windows, and the receiver must union the
    ``received`` sets of entries with the same message id (ACKs only ever say
    what arrived, never what was lost).

* DONE (1): no body; the picture and its record are durably on the ground's disk.
* HELD (2): no body; the ground holds every frame it needs (the reassembled
  bitstream is committed) but has not written the picture yet: it is decoding,
  or retrying because its disk or memory refused. Stop sending; ask later.
* FAILED (3): body = length u8, then that many bytes of UTF-8: why the
  bitstream can never be decoded (a NACK: resending cannot help).

ACK frame header: type ACK, message_id 0, index i of the batch, k = n = the
number of frames in the batch. Byte tables: ``docs/frames.md``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from packetizer.errors import HeaderError
from packetizer.frame import MAX_U16, MAX_U32, Frame, FrameCodec, FrameType

_ENTRY = struct.Struct(">IHB")
_RUN = struct.Struct(">HH")
_WINDOW = struct.Struct(">HH")
_STATUS_MASK = 0x03
_KIND_SHIFT = 2
_ALL, _BITMAP, _RUNS, _WINDOWED = 0, 1, 2, 3
#: Most UTF-8 bytes of a FAILED entry's reason (longer reasons are cut at a character boundary).
MAX_REASON_BYTES = 120
_MAX_RUNS = 255
#: Most frame indices one ACK frame may expand to. A 450-byte frame of forged
#: ALL entries could otherwise claim 61 x 65535 indices (hundreds of MB of sets).
MAX_ACK_INDICES = 1 << 17
_BIT_POSITIONS = tuple(tuple(b for b in range(8) if v >> b & 1) for v in range(256))


class AckStatus(enum.IntEnum):
    """What the ground station says about one message."""

    RECEIVING = 0  #: still being received: ``received`` lists the indices that arrived
    DONE = 1  #: the picture and its record are durably written: delivered
    HELD = 2  #: every frame needed is stored; the picture is not written yet (decoding or retrying)
    FAILED = 3  #: the bitstream is bad and will never decode; ``reason`` says why


@dataclass(frozen=True)
class AckEntry:
    """What the receiver says of one message: its status and, while RECEIVING, the indices that arrived.

    ``received`` is empty for every other status; ``reason`` is set only for FAILED.
    """

    message_id: int
    n: int
    received: frozenset[int]
    status: AckStatus = AckStatus.RECEIVING
    reason: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the message is delivered (the picture is on the ground's disk)."""
        return self.status == AckStatus.DONE


def _reason_bytes(reason: str | None, limit: int = MAX_REASON_BYTES) -> bytes:
    """UTF-8 of ``reason`` cut at a character boundary to ``limit`` bytes."""
    raw = (reason or "").encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = prev = indices[0]
    for i in indices[1:]:
        if i != prev + 1:
            runs.append((start, prev - start + 1))
            start = i
        prev = i
    runs.append((start, prev - start + 1))
    return runs


def _bitmap(indices: Sequence[int], base: int, nbits: int) -> bytes:
    mask = 0
    for i in indices:
        mask |= 1 << (i - base)
    return mask.to_bytes((nbits + 7) // 8, "little")


def _encode_entry(entry: AckEntry, capacity: int) -> list[tuple[bytes, int]]:
    """Encode one entry as the smallest body; several WINDOW pieces if it needs more than a frame.

    Returns (piece, weight) pairs, weight being how many indices the piece expands to.
    """
    mid, n, received = entry.message_id, entry.n, entry.received
    if not isinstance(mid, int) or not 0 <= mid <= MAX_U32:
        raise HeaderError(f"ACK message_id {mid!r} does not fit 32 bits")
    if not isinstance(n, int) or not 0 <= n <= MAX_U16:
        raise HeaderError(f"ACK n {n!r} does not fit 16 bits")
    try:
        status = AckStatus(entry.status)
    except ValueError:
        raise HeaderError(f"ACK status {entry.status!r} is not one of {[s.name for s in AckStatus]}") from None
    if status == AckStatus.FAILED:
        # A small frame cuts the reason shorter still: the entry must fit one frame.
        reason = _reason_bytes(entry.reason, min(MAX_REASON_BYTES, capacity - _ENTRY.size - 1))
        return [(_ENTRY.pack(mid, n, status) + bytes([len(reason)]) + reason, 0)]
    if status != AckStatus.RECEIVING:
        return [(_ENTRY.pack(mid, n, status), 0)]
    indices = sorted(received)
    if indices and (indices[0] < 0 or indices[-1] >= n):
        raise HeaderError(f"ACK for message {mid} lists indices outside 0..{n - 1}")
    if len(indices) == n:
        return [(_ENTRY.pack(mid, n, _ALL << _KIND_SHIFT), n)]
    bitmap_len = (n + 7) // 8
    runs = _runs(indices) if indices else []
    if len(runs) <= _MAX_RUNS and 1 + 4 * len(runs) <= bitmap_len:
        body = bytes([len(runs)]) + b"".join(_RUN.pack(s, length) for s, length in runs)
        kind = _RUNS
    else:
        body = _bitmap(indices, 0, n)
        kind = _BITMAP
    if _ENTRY.size + len(body) <= capacity:
        return [(_ENTRY.pack(mid, n, kind << _KIND_SHIFT) + body, len(indices))]
    window_bits = (capacity - _ENTRY.size - _WINDOW.size) * 8
    pieces = []
    pos = 0
    for base in range(0, n, window_bits):
        nbits = min(window_bits, n - base)
        end = base + nbits
        inside = []
        while pos < len(indices) and indices[pos] < end:
            inside.append(indices[pos])
            pos += 1
        head = _ENTRY.pack(mid, n, _WINDOWED << _KIND_SHIFT) + _WINDOW.pack(base, nbits)
        piece = head + _bitmap(inside, base, nbits)
        pieces.append((piece, len(inside)))
    return pieces


def pack_acks(entries: Sequence[AckEntry], codec: FrameCodec) -> list[bytes]:
    """Pack ``entries`` into as few ACK frames as first-fit allows; returns packed frames.

    Raises :class:`HeaderError` for an entry whose fields are out of range.
    An empty ``entries`` gives an empty list.
    """
    capacity = codec.payload_capacity
    bins: list[bytearray] = []
    weights: list[int] = []
    for entry in entries:
        for piece, weight in _encode_entry(entry, capacity):
            for j, b in enumerate(bins):
                if len(b) + len(piece) <= capacity and weights[j] + weight <= MAX_ACK_INDICES:
                    b += piece
                    weights[j] += weight
                    break
            else:
                bins.append(bytearray(piece))
                weights.append(weight)
    total = len(bins)
    return [codec.pack(Frame(FrameType.ACK, 0, i, total, total, bytes(b))) for i, b in enumerate(bins)]


def _set_bits(bitmap: bytes, base: int, nbits: int, what: str) -> frozenset[int]:
    if int.from_bytes(bitmap, "little") >> nbits:
        raise HeaderError(f"ACK {what} has bits set past its last index")
    out: list[int] = []
    for byte_no, value in enumerate(bitmap):
        if value:
            first = base + 8 * byte_no
            out.extend(first + b for b in _BIT_POSITIONS[value])
    return frozenset(out)


def unpack_acks(frame: Frame) -> list[AckEntry]:
    """Decode the entries of one ACK frame; raises :class:`HeaderError` on malformed content."""
    if frame.type != FrameType.ACK:
        raise HeaderError(f"expected an ACK frame, got {getattr(frame.type, 'name', frame.type)}")
    data = frame.payload
    size = len(data)
    pos = 0
    budget = MAX_ACK_INDICES
    out: list[AckEntry] = []
    while pos < size:
        if pos + _ENTRY.size > size:
            raise HeaderError("ACK payload ends inside an entry header")
        mid, n, flags = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if flags & ~0x0F:
            raise HeaderError(f"ACK entry for message {mid} has unknown flag bits 0x{flags:02x}")
        status = AckStatus(flags & _STATUS_MASK)
        kind = flags >> _KIND_SHIFT
        if status != AckStatus.RECEIVING:
            if kind:
                raise HeaderError(f"ACK entry for message {mid}: a {status.name} entry has no body encoding")
            reason = None
            if status == AckStatus.FAILED:
                if pos >= size:
                    raise HeaderError(f"ACK reason for message {mid} is truncated")
                end = pos + 1 + data[pos]
                if end > size or data[pos] > MAX_REASON_BYTES:
                    raise HeaderError(f"ACK reason for message {mid} is truncated or too long")
                reason = data[pos + 1 : end].decode("utf-8", "replace")
                pos = end
            out.append(AckEntry(mid, n, frozenset(), status, reason))
            continue
        if kind == _ALL:
            if n > budget:
                raise HeaderError(f"ACK frame expands to more than {MAX_ACK_INDICES} indices: not from pack_acks")
            received = frozenset(range(n))
        elif kind == _BITMAP:
            end = pos + (n + 7) // 8
            if end > size:
                raise HeaderError(f"ACK bitmap for message {mid} is truncated")
            received = _set_bits(data[pos:end], 0, n, "bitmap")
            pos = end
        elif kind == _RUNS:
            if pos >= size:
                raise HeaderError(f"ACK runs for message {mid} are truncated")
            count = data[pos]
            pos += 1
            end = pos + 4 * count
            if end > size:
                raise HeaderError(f"ACK runs for message {mid} are truncated")
            runs = list(_RUN.iter_unpack(data[pos:end]))
            for start, length in runs:
                if length == 0 or start + length > n:
                    raise HeaderError(f"ACK run {start}+{length} is outside message {mid}'s {n} frames")
            if sum(length for _, length in runs) > budget:
                raise HeaderError(f"ACK frame expands to more than {MAX_ACK_INDICES} indices: not from pack_acks")
            got: set[int] = set()
            for start, length in runs:
                got.update(range(start, start + length))
            received = frozenset(got)
            pos = end
        else:
            if pos + _WINDOW.size > size:
                raise HeaderError(f"ACK window for message {mid} is truncated")
            base, nbits = _WINDOW.unpack_from(data, pos)
            pos += _WINDOW.size
            end = pos + (nbits + 7) // 8
            if base + nbits > n or end > size:
                raise HeaderError(f"ACK window {base}+{nbits} for message {mid} is out of range or truncated")
            received = _set_bits(data[pos:end], base, nbits, "window")
            pos = end
        budget -= len(received)
        if budget < 0:
            raise HeaderError(f"ACK frame expands to more than {MAX_ACK_INDICES} indices: not from pack_acks")
        out.append(AckEntry(mid, n, received))
    return out
