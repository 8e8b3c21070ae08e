"""Framing for the satellite link: fixed-size frames, CRC, segmentation, reassembly, FEC and ACKs."""
