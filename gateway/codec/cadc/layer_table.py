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
for a one-frame image, 14 for eight frames.  Format 3 adds one more varint:
the bytes of the colour layer (:mod:`gateway.codec.cadc.color_layer`) that
sits between the table and the stream.
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


def _read_uleb(payload: bytes, pos: int) -> tuple[int, int]:
    """(a table's size field at ``pos``, the position after it); BitstreamError when cut, over-long or absurd."""
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
    return value, pos


def varint_size(value: int) -> int:
    """Bytes the ULEB128 form of ``value`` takes."""
    return max(1, (int(value).bit_length() + 6) // 7)


@dataclass(frozen=True)
class LayerTable:
    """Stream bytes per layer (ẑ, step 0..3) and the CRC-8 of each step's symbols."""

    sizes: tuple[int, ...]
    step_checks: tuple[int, ...]
    #: Bytes of the colour layer after the table (format 3); None: a format-2 table, which has no such field.
    color_bytes: int | None = None

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
        color = b"" if self.color_bytes is None else _uleb(int(self.color_bytes))
        return b"".join(_uleb(int(s)) for s in self.sizes) + bytes(self.step_checks) + color

    @classmethod
    def unpack(cls, payload: bytes, color: bool = False) -> tuple["LayerTable", int]:
        """(table, its length in bytes) from the front of a payload; BitstreamError when cut or absurd.

        ``color``: the table is format 3's, with the colour layer's size after the checks.
        """
        sizes, pos = [], 0
        for _ in range(LAYERS):
            value, pos = _read_uleb(payload, pos)
            sizes.append(value)
        if pos + LAYERS - 1 > len(payload):
            raise BitstreamError("CADC payload ends inside its layer table: the bitstream is truncated")
        checks = tuple(payload[pos : pos + LAYERS - 1])
        pos += LAYERS - 1
        color_bytes = None
        if color:
            color_bytes, pos = _read_uleb(payload, pos)
        return cls(tuple(sizes), checks, color_bytes), pos

    @staticmethod
    def size_for(sizes: list[float], color_bytes: int | None = None) -> int:
        """Bytes of a table for these (estimated) layer sizes (and a format-3 colour layer of ``color_bytes``)."""
        color = 0 if color_bytes is None else varint_size(color_bytes)
        return sum(varint_size(max(0, round(s))) for s in sizes) + LAYERS - 1 + color


def split_payload(payload: bytes, version: int) -> tuple[LayerTable, bytes, int]:
    """(table, colour layer bytes, where the stream starts) of a format-2 or -3 CADC payload.

    BitstreamError when the payload ends before the colour layer does: without
    it nothing decodes (the header's checksum covers it).
    """
    table, offset = LayerTable.unpack(payload, color=version >= 3)
    end = offset + (table.color_bytes or 0)
    if len(payload) < end:
        raise BitstreamError(f"CADC payload ends inside its {table.color_bytes}-byte colour layer: a prefix needs "
                             f"the first {end} payload bytes (layer table and colour layer) to decode at all")
    return table, bytes(payload[offset:end]), end
