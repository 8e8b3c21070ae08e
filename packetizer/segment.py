"""Cutting a message into frames, optional zfec parity, and rebuilding it.

A message of L bytes becomes k = max(1, ceil(L / C)) DATA frames, C being the
codec's payload capacity: frames 0..k-2 carry C bytes, frame k-1 the rest
(0..C bytes; an empty message is one empty DATA frame). With ``parity = m``
there are m PARITY frames (indices k..k+m-1) made by zfec, a systematic
Reed-Solomon code over GF(2^8), from the k blocks with the last one
zero-padded to C; each PARITY frame carries the last block's true length in
``last_len``, so any k of the k+m frames give back exactly L bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

import zfec

from packetizer.errors import FECError, HeaderError, MessageTooLarge, ReassemblyError
from packetizer.frame import MAX_FEC_FRAMES, MAX_U16, MAX_U32, Frame, FrameCodec, FrameType, make_frame

_DATA = FrameType.DATA
_PARITY = FrameType.PARITY


@lru_cache(maxsize=64)
def _encoder(k: int, n: int) -> zfec.Encoder:
    # Building the generator matrix costs more than coding a small message.
    return zfec.Encoder(k, n)


@lru_cache(maxsize=64)
def _decoder(k: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(k, n)


def _check_counts(k: int, parity: int) -> None:
    if not isinstance(parity, int) or parity < 0:
        raise FECError(f"parity must be a non-negative integer, got {parity!r}")
    if k > MAX_U16:
        raise MessageTooLarge(f"message needs {k} data frames; at most {MAX_U16} fit the 16-bit frame counters")
    if parity and k + parity > MAX_FEC_FRAMES:
        raise FECError(
            f"{k} data + {parity} parity frames exceed zfec's limit of {MAX_FEC_FRAMES} frames per message: "
            "use fewer parity frames, a larger frame_size, or split the message"
        )


class Carrier(Protocol):
    """Anything that says how many payload bytes a frame carries: a :class:`FrameCodec`, or a budget."""

    @property
    def payload_capacity(self) -> int: ...


def _data_frames(nbytes: int, capacity: int) -> int:
    return max(1, -(-nbytes // capacity))


def frames_for(nbytes: int, codec: Carrier, parity: int = 0) -> int:
    """Total frames (data + parity) a message of ``nbytes`` bytes needs.

    Raises :class:`FECError` if the parity request exceeds zfec's 256-frame
    limit and :class:`MessageTooLarge` past 65535 data frames.
    """
    if nbytes < 0:
        raise MessageTooLarge(f"message size {nbytes} is negative")
    k = _data_frames(nbytes, codec.payload_capacity)
    _check_counts(k, parity)
    return k + parity


def message_capacity(n_frames: int, codec: Carrier, parity: int = 0) -> int:
    """Largest message (bytes) that fits in ``n_frames`` frames, ``parity`` of them parity.

    Returns 0 when not even one data frame is left. With parity, zfec's
    256-frame limit caps the data frames at ``256 - parity``.
    """
    if not isinstance(parity, int) or parity < 0:
        raise FECError(f"parity must be a non-negative integer, got {parity!r}")
    k = min(n_frames - parity, MAX_U16)
    if parity:
        k = min(k, MAX_FEC_FRAMES - parity)
    return max(k, 0) * codec.payload_capacity


def split_message(message_id: int, data: bytes, codec: FrameCodec, parity: int = 0) -> list[Frame]:
    """Cut ``data`` into k DATA frames plus ``parity`` zfec PARITY frames.

    Frames come out in index order (data first). Any k of the returned
    frames rebuild the message with :func:`assemble`.
    """
    if not isinstance(message_id, int) or not 0 <= message_id <= MAX_U32:
        raise HeaderError(f"message_id {message_id!r} must be an integer in 0..{MAX_U32}")
    data = bytes(data)
    cap = codec.payload_capacity
    size = len(data)
    k = _data_frames(size, cap)
    _check_counts(k, parity)
    n = k + parity
    if size == 0:
        chunks = [b""]
    else:
        chunks = [data[i : i + cap] for i in range(0, size, cap)]
    frames = [make_frame(_DATA, message_id, i, k, n, chunk) for i, chunk in enumerate(chunks)]
    if parity:
        last = chunks[-1]
        blocks = (*chunks[:-1], last + bytes(cap - len(last)))
        coded = _encoder(k, n).encode(blocks, tuple(range(k, n)))
        last_len = len(last)
        frames.extend(
            make_frame(_PARITY, message_id, k + j, k, n, bytes(block), last_len) for j, block in enumerate(coded)
        )
    return frames


class MessageFrames:
    """The distinct frames collected so far for one message, checked for consistency.

    Used by :func:`assemble`. ``add``
    raises :class:`ReassemblyError` and leaves the state unchanged when a
    frame contradicts the ones already held.
    """

    __slots__ = ("message_id", "k", "n", "blocks", "block_size", "last_len", "nbytes")

    def __init__(self, message_id: int, k: int, n: int) -> None:
        if not 1 <= k <= n <= MAX_U16 or (n > k and n > MAX_FEC_FRAMES):
            raise ReassemblyError(f"impossible frame counts k={k} n={n}")
        self.message_id = message_id
        self.k = k
        self.n = n
        self.blocks: dict[int, bytes] = {}
        self.block_size: int | None = None  # length of every block but the last data block
        self.last_len: int | None = None  # length of the last data block
        self.nbytes = 0

    def add(self, frame: Frame) -> bool:
        """Hold ``frame``; return False if its index was already held (a duplicate)."""
        if frame.message_id != self.message_id or frame.k != self.k or frame.n != self.n:
            raise ReassemblyError(
                f"frame of message {frame.message_id} (k={frame.k}, n={frame.n}) does not belong to "
                f"message {self.message_id} (k={self.k}, n={self.n})"
            )
        index = frame.index
        payload = frame.payload
        held = self.blocks.get(index)
        if held is not None:
            if held != payload:
                raise ReassemblyError(f"two different payloads for frame {index} of message {self.message_id}")
            return False
        plen = len(payload)
        block_size = self.block_size
        t = frame.type
        if t == _DATA and plen == block_size and 0 <= index < self.k - 1:
            # The common case: a full-size block from the middle of the message.
            self.blocks[index] = payload
            self.nbytes += plen
            return True
        last_len = self.last_len
        if t == _DATA:
            if not 0 <= index < self.k:
                raise ReassemblyError(f"DATA frame index {index} is outside 0..{self.k - 1}")
            if index == self.k - 1:
                if (block_size is not None and plen > block_size) or (last_len is not None and plen != last_len):
                    raise ReassemblyError(f"last DATA frame of message {self.message_id} has an inconsistent length {plen}")
                last_len = plen
            elif block_size is None:
                if last_len is not None and last_len > plen:
                    raise ReassemblyError(f"DATA frame {index} is shorter than the last block")
                block_size = plen
            elif plen != block_size:
                raise ReassemblyError(f"DATA frame {index} has {plen} bytes, other blocks have {block_size}")
        elif t == _PARITY:
            if not self.k <= index < self.n:
                raise ReassemblyError(f"PARITY frame index {index} is outside {self.k}..{self.n - 1}")
            if block_size is not None and plen != block_size:
                raise ReassemblyError(f"PARITY frame {index} has {plen} bytes, other blocks have {block_size}")
            if frame.last_len > plen or (last_len is not None and frame.last_len != last_len):
                raise ReassemblyError(f"PARITY frame {index} disagrees on the last block length ({frame.last_len})")
            block_size = plen
            last_len = frame.last_len
        else:
            raise ReassemblyError(f"{FrameType(t).name} frames carry no message data; handle them separately")
        self.block_size = block_size
        self.last_len = last_len
        self.blocks[index] = payload
        self.nbytes += plen
        return True

    @property
    def ready(self) -> bool:
        """True once enough distinct frames are held to rebuild the message."""
        return len(self.blocks) >= self.k

    def build(self) -> bytes:
        """Rebuild the message; call only when :attr:`ready`."""
        k = self.k
        blocks = self.blocks
        if all(i in blocks for i in range(k)):
            return b"".join([blocks[i] for i in range(k)])
        # Some data block is missing, so at least one parity frame is held and
        # both block_size and last_len are known.
        size = self.block_size
        last_len = self.last_len
        assert size is not None and last_len is not None
        chosen = sorted(blocks)[:k]
        padded = tuple(
            blocks[i] + bytes(size - last_len) if i == k - 1 else blocks[i] for i in chosen
        )
        decoded = _decoder(k, self.n).decode(padded, tuple(chosen))
        decoded[-1] = decoded[-1][:last_len]
        return b"".join(decoded)


def assemble(frames: Iterable[Frame]) -> bytes | None:
    """Rebuild one message from its frames, in any order and with duplicates.

    Returns the message once at least k distinct DATA/PARITY frames are
    present (erasure-decoding if data frames are missing), otherwise None.
    Raises :class:`ReassemblyError` if the frames are not all of one
    consistent message.
    """
    state: MessageFrames | None = None
    for frame in frames:
        if state is None:
            if frame.type not in (_DATA, _PARITY):
                raise ReassemblyError(f"{FrameType(frame.type).name} frames carry no message data")
            state = MessageFrames(frame.message_id, frame.k, frame.n)
        state.add(frame)
    if state is None or not state.ready:
        return None
    return state.build()
