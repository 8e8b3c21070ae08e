"""The packetizer's exception hierarchy.

Everything this package raises on purpose derives from :class:`PacketizerError`,
so a daemon can catch that one type around untrusted frames and keep running.
:class:`FrameError` and its subclasses mean "this frame is malformed: drop it".
"""

from __future__ import annotations


class PacketizerError(Exception):
    """Base class of every deliberate packetizer error."""


class FrameError(PacketizerError):
    """A frame is malformed (or a frame to be packed has invalid fields)."""


class FrameSizeError(FrameError):
    """A frame is not exactly ``frame_size`` bytes, or a payload does not fit one."""


class BadMagic(FrameError):
    """The first byte is not the satgw frame magic: not one of our frames."""


class BadVersion(FrameError):
    """The frame's format version is one this build does not speak."""


class CRCError(FrameError):
    """The CRC-32C does not match: the frame was corrupted on the link."""


class AuthError(FrameError):
    """The HMAC tag does not match: wrong key, or a forged or tampered frame."""


class ReplayError(FrameError):
    """An authenticated frame's epoch and sequence number were seen before, or are too old: a replay; drop it."""


class HeaderError(FrameError):
    """A header field (type, index, counts, length, padding) is out of range or inconsistent."""


class ReassemblyError(PacketizerError):
    """Frames that claim to be one message disagree with each other."""


class FECError(PacketizerError):
    """An erasure-coding request is impossible (e.g. more than 256 frames with parity)."""


class MessageTooLarge(PacketizerError):
    """A message needs more data frames than the 16-bit frame counters can number."""
