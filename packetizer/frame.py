"""Fixed-size link frames: header, payload, zero padding, optional HMAC tag, CRC-32C.

Wire layout, format version 2 (big-endian; byte tables in ``docs/frames.md``)::

    0      magic 0xA5
    1      version (high nibble, = 2) | frame type (low nibble)
    2..5   message id (u32)
    6..7   index (u16)
    8..9   k, data-frame count (u16)
    10..11 n, total frame count k + m (u16)
    12..13 length (u16): payload length; for PARITY frames the length of the
           message's last data block (the parity payload fills the frame)
    14..   payload, then zero padding
    [replay] authenticated frames only: epoch (u32) and sequence number (u32)
           of the sender, under the tag, so a recorded frame replayed later is
           recognised (:class:`packetizer.replay.ReplayWindow`)
    [tag]  authenticated frames only: truncated HMAC-SHA256 over bytes 0 .. tag start
    -4..   CRC-32C over every byte before it (stored little-endian)

Overhead is 18 bytes (14 header + 4 CRC); an authenticated frame adds the
8-byte replay field and ``tag_len``.
"""

from __future__ import annotations

import enum
import hmac
import struct
import time
from dataclasses import dataclass

import crcmod.predefined

from packetizer.errors import (
    AuthError,
    BadMagic,
    BadVersion,
    CRCError,
    FrameError,
    FrameSizeError,
    HeaderError,
)
from packetizer.replay import ReplayWindow

MAGIC = 0xA5
#: Version 2 added the replay field of authenticated frames and the ACK statuses (docs/frames.md).
VERSION = 2
HEADER_SIZE = 14
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE
#: Epoch (u32) and sequence number (u32) of an authenticated frame, covered by its tag.
REPLAY_SIZE = 8
MIN_FRAME_SIZE = 64
MAX_FRAME_SIZE = 9000
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
#: zfec works over GF(2^8): at most 256 frames (data + parity) per coded message.
MAX_FEC_FRAMES = 256

_HEADER = struct.Struct(">BBIHHHH")
_REPLAY = struct.Struct(">II")
# crcmod picks its C extension automatically when it is built; the pure-Python
# fallback would be ~100x slower, so this module insists on the fast one.
crc32c = crcmod.predefined.mkCrcFun("crc-32c")
#: CRC-32C of any message followed by its own CRC in little-endian order.
CRC_RESIDUE = 0x48674BC7


class FrameType(enum.IntEnum):
    """What a frame carries."""

    DATA = 0  #: one block of a message
    PARITY = 1  #: one erasure-code (zfec) block of a message
    ACK = 2  #: receiver -> sender: which frames of which messages arrived
    META = 3  #: one small opaque per-message frame (e.g. msgpack metadata), outside the image budget


_TYPES = tuple(FrameType)
_DATA_T = FrameType.DATA
_PARITY_T = FrameType.PARITY
_VERSION_BITS = VERSION << 4


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    ``k`` and ``n`` are the message's data-frame and total frame counts; for
    PARITY frames ``last_len`` is the length of the message's last data block
    (0..payload_capacity), so the message length survives losing that block.
    ``last_len`` is 0 for every other type. For ACK and META frames ``index``,
    ``k`` and ``n`` are free 16-bit values (see docs/frames.md for conventions).
    """

    type: FrameType
    message_id: int
    index: int
    k: int
    n: int
    payload: bytes
    last_len: int = 0


_new = object.__new__


def make_frame(
    type: FrameType, message_id: int, index: int, k: int, n: int, payload: bytes, last_len: int = 0
) -> Frame:
    """Build a :class:`Frame` without the frozen-dataclass ``__init__``.

    The generated ``__init__`` calls ``object.__setattr__`` once per field,
    which was a third of the per-frame cost on the hot path; filling the
    instance dict directly gives an identical object in a fraction of the time.
    """
    frame = _new(Frame)
    frame.__dict__.update(type=type, message_id=message_id, index=index, k=k, n=n, payload=payload, last_len=last_len)
    return frame


def payload_capacity(frame_size: int = 450, tag_len: int = 0) -> int:
    """Payload bytes one frame of ``frame_size`` carries with a ``tag_len``-byte HMAC tag (0: no tag).

    An authenticated frame also carries the 8-byte replay field (:data:`REPLAY_SIZE`).

    Raises :class:`FrameSizeError` for a frame size outside 64..9000 and
    :class:`FrameError` for a tag length other than 0 or 4..32.
    """
    if not isinstance(frame_size, int) or not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise FrameSizeError(
            f"frame_size {frame_size!r} is out of range: use an integer from {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE}"
        )
    if tag_len != 0 and not (isinstance(tag_len, int) and 4 <= tag_len <= 32):
        raise FrameError(f"tag_len {tag_len} is out of range: use 4..32 bytes of HMAC-SHA256")
    return frame_size - OVERHEAD - (tag_len + REPLAY_SIZE if tag_len else 0)


class FrameCodec:
    """Packs :class:`Frame` objects into exactly ``frame_size`` bytes and back.

    With ``auth_key`` every frame carries a ``tag_len``-byte truncated
    HMAC-SHA256, and frames without the right tag raise :class:`AuthError`.
    Authenticated frames are also stamped with this codec's ``epoch`` and a
    sequence number that grows with every :meth:`pack` (``epoch`` defaults to
    the wall clock in seconds; a daemon passes one that never goes back, see
    docs/frames.md). Give ``replay`` (a :class:`ReplayWindow`) to drop frames
    whose stamp was seen before or is too old (:class:`ReplayError`).
    """

    def __init__(
        self,
        frame_size: int = 450,
        auth_key: bytes | None = None,
        tag_len: int = 8,
        *,
        epoch: int | None = None,
        replay: ReplayWindow | None = None,
    ) -> None:
        if auth_key is not None and (not isinstance(auth_key, (bytes, bytearray)) or len(auth_key) == 0):
            raise FrameError("auth_key must be non-empty bytes (or None for no authentication)")
        self.tag_len: int = tag_len if auth_key is not None else 0
        self.payload_capacity: int = payload_capacity(frame_size, self.tag_len)  # checks both
        self.frame_size: int = frame_size
        self.auth_key: bytes | None = bytes(auth_key) if auth_key is not None else None
        self._tag_at = frame_size - CRC_SIZE - self.tag_len
        # Padding runs up to the replay field (authenticated) or the CRC.
        self._pad_end = self._tag_at - REPLAY_SIZE if auth_key is not None else self._tag_at
        self._crc_at = frame_size - CRC_SIZE
        self._blank = bytes(frame_size)
        if epoch is None:
            epoch = int(time.time())
        if not isinstance(epoch, int) or not 0 <= epoch <= MAX_U32:
            raise FrameError(f"epoch {epoch!r} must be an integer in 0..{MAX_U32}")
        self.epoch: int = epoch
        self.seq: int = 0  #: the sequence number the next authenticated frame gets
        self.replay = replay

    def _stamp(self) -> bytes:
        """The replay field of the next authenticated frame (a new epoch once 2**32 frames are numbered)."""
        if self.seq > MAX_U32:
            self.epoch = min(self.epoch + 1, MAX_U32)
            self.seq = 0
        stamp = _REPLAY.pack(self.epoch, self.seq)
        self.seq += 1
        return stamp

    def __repr__(self) -> str:
        auth = f", tag_len={self.tag_len}" if self.auth_key is not None else ""
        return f"FrameCodec(frame_size={self.frame_size}{auth})"

    def pack(self, frame: Frame) -> bytes:
        """Encode ``frame`` into exactly ``frame_size`` bytes.

        Raises :class:`HeaderError` for out-of-range fields and
        :class:`FrameSizeError` for a payload that does not fit.
        """
        t = frame.type
        message_id, index, k, n, payload = frame.message_id, frame.index, frame.k, frame.n, frame.payload
        plen = len(payload)
        if (
            t == _DATA_T
            and 0 <= index < k <= n <= MAX_U16
            and (n == k or n <= MAX_FEC_FRAMES)
            and 0 <= message_id <= MAX_U32
            and plen <= self.payload_capacity
            and not frame.last_len
        ):
            length = plen  # the common case, checked inline; everything else goes the long way
        else:
            length = self._check_fields(t, message_id, index, k, n, plen, frame.last_len)
        # Concatenating bytes beats filling a bytearray in place for 450-byte frames.
        body = _HEADER.pack(MAGIC, _VERSION_BITS | t, message_id, index, k, n, length) + payload
        short = self._pad_end - len(body)
        if short:
            body += self._blank[:short]
        if self.auth_key is not None:
            body += self._stamp()
            body += hmac.digest(self.auth_key, body, "sha256")[: self.tag_len]
        return body + crc32c(body).to_bytes(CRC_SIZE, "little")

    def unpack(self, data: bytes) -> Frame:
        """Decode and verify one frame; raises only :class:`FrameError` subclasses.

        Checks, in order: size, magic, version, CRC-32C, HMAC tag, replay
        window (authenticated frames, when the codec has one), header fields,
        zero padding. Nothing is allocated from header values before they have
        been checked against the frame size.
        """
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise FrameSizeError(f"a frame must be bytes, not {type(data).__name__}")
            data = bytes(data)
        fs = self.frame_size
        if len(data) != fs:
            raise FrameSizeError(f"frame is {len(data)} bytes, expected exactly {fs}: truncated, or a different frame_size")
        if data[0] != MAGIC:
            raise BadMagic(f"first byte is 0x{data[0]:02x}, not the frame magic 0x{MAGIC:02x}: not a satgw frame")
        version = data[1] >> 4
        if version != VERSION:
            raise BadVersion(f"frame format version {version}; this build speaks version {VERSION}: upgrade the older side")
        # The CRC is stored little-endian, so the CRC of the whole frame is a
        # constant residue and no slicing is needed to check it.
        if crc32c(data) != CRC_RESIDUE:
            raise CRCError("CRC-32C mismatch: the frame was corrupted in transit; drop it")
        if self.auth_key is not None:
            tag_at = self._tag_at
            expected = hmac.digest(self.auth_key, memoryview(data)[:tag_at], "sha256")[: self.tag_len]
            if not hmac.compare_digest(expected, data[tag_at : self._crc_at]):
                raise AuthError("HMAC tag mismatch: wrong key, or a forged or tampered frame; drop it")
            if self.replay is not None:
                self.replay.check(*_REPLAY.unpack_from(data, self._pad_end))
        _, vt, message_id, index, k, n, length = _HEADER.unpack_from(data)
        t = vt & 0x0F
        if t == 0 and index < k <= n and (n == k or n <= MAX_FEC_FRAMES) and length <= self.payload_capacity:
            plen, last_len = length, 0  # a valid DATA frame, checked inline
        else:
            if t >= len(_TYPES):
                raise HeaderError(f"unknown frame type {t}")
            if t == _PARITY_T:
                plen, last_len = self.payload_capacity, length
            else:
                plen, last_len = length, 0
            self._check_fields(t, message_id, index, k, n, plen, last_len, HeaderError)
        end = HEADER_SIZE + plen
        pad_end = self._pad_end
        if end != pad_end and data.count(0, end, pad_end) != pad_end - end:
            raise HeaderError("padding after the payload is not zero: a foreign or buggy sender")
        frame = _new(Frame)  # inlined make_frame: this is the hottest line of the receiver
        frame.__dict__.update(
            type=_TYPES[t], message_id=message_id, index=index, k=k, n=n, payload=data[HEADER_SIZE:end], last_len=last_len
        )
        return frame

    def _check_fields(
        self,
        t: int,
        message_id: int,
        index: int,
        k: int,
        n: int,
        plen: int,
        last_len: int,
        size_error: type[FrameError] = FrameSizeError,
    ) -> int:
        """Validate header fields; return the value of the wire length field.

        An oversized payload is the caller's FrameSizeError when packing, but a
        lying header (HeaderError) when unpacking.
        """
        cap = self.payload_capacity
        if not 0 <= message_id <= MAX_U32:
            raise HeaderError(f"message_id {message_id} does not fit 32 bits")
        if not (0 <= index <= MAX_U16 and 0 <= k <= MAX_U16 and 0 <= n <= MAX_U16):
            raise HeaderError(f"index/k/n ({index}/{k}/{n}) must each fit 16 bits")
        if t == _DATA_T:
            if not 0 <= index < k <= n:
                raise HeaderError(f"DATA frame needs 0 <= index < k <= n, got index={index} k={k} n={n}")
            if n > k and n > MAX_FEC_FRAMES:
                raise HeaderError(f"n={n} with parity exceeds the erasure code's {MAX_FEC_FRAMES}-frame limit")
        elif t == _PARITY_T:
            if not 1 <= k <= index < n <= MAX_FEC_FRAMES:
                raise HeaderError(
                    f"PARITY frame needs 1 <= k <= index < n <= {MAX_FEC_FRAMES}, got index={index} k={k} n={n}"
                )
            if plen != cap:
                raise size_error(f"PARITY payload is {plen} bytes; it must fill the frame ({cap} bytes)")
            if not 0 <= last_len <= cap:
                raise HeaderError(f"PARITY last_len {last_len} is outside 0..{cap}")
            return last_len
        elif t not in (FrameType.ACK, FrameType.META):
            raise HeaderError(f"unknown frame type {t!r}")
        if last_len != 0:
            raise HeaderError("last_len is only meaningful on PARITY frames; leave it 0")
        if plen > cap:
            raise size_error(f"payload is {plen} bytes but a frame carries at most {cap}: split the message")
        return plen
