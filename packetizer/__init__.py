"""Framing for the satellite link: fixed-size frames, CRC, segmentation, reassembly, FEC and ACKs."""

from packetizer.ack import AckEntry, pack_acks, unpack_acks
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.reassembly import Reassembler
from packetizer.segment import assemble, frames_for, message_capacity, split_message

__all__ = [
    "AckEntry",
    "Frame",
    "FrameCodec",
    "FrameType",
    "Reassembler",
    "assemble",
    "frames_for",
    "message_capacity",
    "pack_acks",
    "split_message",
    "unpack_acks",
]
