"""The layer table of a CADC v2 payload: where each layer ends, and a check on each ŷ step.

A CADC bitstream is one range-coded stream of five layers — ẑ, then ŷ's
four quadtree steps — so that any prefix is useful: a decoder that has the
first few layers fills the rest from the entropy model (progressive
delivery).  The table in front of the stream says exactly how many stream
bytes each layer needs, so a decoder of a prefix knows which layers it has
without guessing, and carries a CRC-8 of each ŷ step's symbols (ẑ is covered
by the header's CRC-16 together with the header fields).

Layout: five ULEB128 varints — the bytes of the stream each layer adds (a
layer is decodable from the first ``sum(sizes[:i+1])`` bytes, the reader
padding zeros) — then four CRC-8 bytes, one per ŷ step.  Typically 9 bytes
for a one-frame image, 14 for eight frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import crcmod.predefined

from gateway.errors import BitstreamError

#: ẑ + four quadtree steps of ŷ.
LAYERS = 5
#: Largest layer size the table accepts (bytes); far beyond any real stream, so a forged varint cannot run away.
_MAX_LAYER_BYTES = 1 << 28
_crc8 = crcmod.predefined.mkCrcFun("crc-8")


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07) of ``data``: the per-step symbol check."""
    return _crc8(bytes(data))


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def varint_size(value: int) -> int:
    """Bytes the ULEB128 form of ``value`` takes."""
    return max(1, (int(value).bit_length() + 6) // 7)


@dataclass(frozen=True)
class LayerTable:
    """Stream bytes per layer (ẑ, step 0..3) and the CRC-8 of each step's symbols."""

    sizes: tuple[int, ...]
    step_checks: tuple[int, ...]

    def ends(self) -> list[int]:
        """Cumulative stream bytes needed to decode layers 0..i."""
        out, total = [], 0
        for size in self.sizes:
            total += size
            out.append(total)
        return out

    def layers_in(self, available: int) -> int:
        """How many leading layers a stream prefix of ``available`` bytes holds completely."""
        return sum(1 for end in self.ends() if end <= available)

    def pack(self) -> bytes:
        """The table's bytes."""
        if len(self.sizes) != LAYERS or len(self.step_checks) != LAYERS - 1:
            raise BitstreamError(f"a layer table has {LAYERS} sizes and {LAYERS - 1} checks")
        return b"".join(_uleb(int(s)) for s in self.sizes) + bytes(self.step_checks)

    @classmethod
    def unpack(cls, payload: bytes) -> tuple["LayerTable", int]:
        """(table, its length in bytes) from the front of a payload; BitstreamError when cut or absurd."""
        sizes, pos = [], 0
        for _ in range(LAYERS):
            value, shift = 0, 0
            while True:
                if pos >= len(payload):
                    raise BitstreamError("CADC payload ends inside its layer table: the bitstream is truncated")
                byte = payload[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
                if shift > 28:
                    raise BitstreamError("CADC layer table holds an over-long size: the bitstream is corrupt")
            if value > _MAX_LAYER_BYTES:
                raise BitstreamError(f"CADC layer table claims a {value}-byte layer: the bitstream is corrupt")
            sizes.append(value)
        if pos + LAYERS - 1 > len(payload):
            raise BitstreamError("CADC payload ends inside its layer table: the bitstream is truncated")
        checks = tuple(payload[pos : pos + LAYERS - 1])
        return cls(tuple(sizes), checks), pos + LAYERS - 1

    @staticmethod
    def size_for(sizes: list[float]) -> int:
        """Bytes of a table for these (estimated) layer sizes."""
        return sum(varint_size(max(0, round(s))) for s in sizes) + LAYERS - 1
