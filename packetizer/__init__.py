"""Framing for the satellite link: fixed-size frames, CRC, segmentation, reassembly, FEC and ACKs.

Reassembly here is stateless (:func:`assemble`: any k frames of one message);
the ground station keeps the frames durably in its frame store
(``gateway.store.framestore``) and assembles from there.
"""

from packetizer.ack import AckEntry, AckStatus, pack_acks, unpack_acks
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.replay import ReplayWindow
from packetizer.segment import assemble, frames_for, message_capacity, split_message

__all__ = [
    "AckEntry",
    "AckStatus",
    "Frame",
    "FrameCodec",
    "FrameType",
    "ReplayWindow",
    "assemble",
    "frames_for",
    "message_capacity",
    "pack_acks",
    "split_message",
    "unpack_acks",
]
