"""A packet budget: how many bytes of bitstream N frames carry, asked of the packetizer.

The byte budget comes from the packetizer's own arithmetic
(:func:`packetizer.frame.payload_capacity`, :func:`packetizer.segment.message_capacity`),
never from a copy of it, so the rate controller and the segmenter always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ConfigError
from packetizer.errors import PacketizerError
from packetizer.frame import FrameCodec, payload_capacity
from packetizer.segment import frames_for, message_capacity


@dataclass(frozen=True)
class Budget:
    """``frames`` frames of ``frame_size`` bytes on the wire, ``parity`` of them erasure-code parity,
    each with a ``tag_len``-byte HMAC tag (0: no tag).

    Raises :class:`ConfigError` at construction for a budget the packetizer
    cannot carry (no frames, a frame size or tag length out of range).
    """

    frames: int
    frame_size: int = 450
    tag_len: int = 0
    parity: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or isinstance(self.frames, bool) or self.frames < 1:
            raise ConfigError(f"frame budget must be a positive integer, got {self.frames!r}")
        try:
            message_capacity(self.frames, self, self.parity)  # checks frame size, tag length and parity
        except PacketizerError as exc:
            raise ConfigError(f"bad frame budget: {exc}") from exc

    @classmethod
    def for_frames(cls, frames: int, codec: FrameCodec, parity: int = 0) -> "Budget":
        """The budget of ``frames`` frames as ``codec`` (the sender's real frame codec) packs them."""
        return cls(frames, codec.frame_size, codec.tag_len, parity)

    @property
    def payload_capacity(self) -> int:
        """Payload bytes of one frame."""
        return payload_capacity(self.frame_size, self.tag_len)

    @property
    def bytes(self) -> int:
        """The longest bitstream the budget carries (0 when parity leaves no data frame)."""
        return message_capacity(self.frames, self, self.parity)

    def frames_needed(self, nbytes: int) -> int | None:
        """Frames (this frame size, tag and parity) a bitstream of ``nbytes`` needs; None if no budget fits it."""
        try:
            return frames_for(nbytes, self, self.parity)
        except PacketizerError:
            return None

    def describe(self) -> str:
        """How the budget counts, e.g. ``4 frames x 432 B payload, 0 parity``."""
        return f"{self.frames} frames x {self.payload_capacity} B payload, {self.parity} parity"
