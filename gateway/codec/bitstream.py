"""Bitstream formats v1 and v2: the 12-byte header every encoded image starts with.

Every byte on the link is precious (one frame carries ~430 bytes), so the
header is fixed-size and tiny.  Layout (big endian)::

    offset size field
    0      1    version (high nibble, 2; 1 still decodes) | codec id (low nibble)
    1      2    model id: 16-bit hash of the model bundle (0 for classical codecs)
    3      2    original width in pixels (1..65535)
    5      2    original height in pixels (1..65535)
    7      1    scale code s: coded size = max(1, round(original * 2**(-s/8)))
    8      1    lambda code (CADC) or quality 0..100 (classical)
    9      1    delta code (CADC) or 0 (classical)
    10     2    checksum, see below
    12     ...  payload (codec specific)

The checksum is a CRC-16: in v2 over header bytes 0-9 followed by what the
codec protects with it (the payload for classical codecs; the hyperprior
symbols for CADC, whose later layers carry their own checks), so a flipped
bit in the size, scale, λ or Δ fields is detected instead of decoding to a
different picture.  In v1 it covered the codec's part only.

The header is validated before anything is allocated from it: sizes are
checked against :data:`MAX_PIXELS` so a forged header cannot make a decoder
allocate gigabytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

import crcmod.predefined

from gateway.errors import BitstreamError

VERSION = 2
#: Format versions this build decodes (3: a CADC stream with a colour layer; the header is the same).
SUPPORTED_VERSIONS = (1, 2, 3)
HEADER_SIZE = 12
MAX_PIXELS = 64_000_000  # 64 MP: larger images are refused before any allocation
_STRUCT = struct.Struct(">BHHHBBBH")
_crc16 = crcmod.predefined.mkCrcFun("crc-ccitt-false")

# Codec ids (low nibble of byte 0).  0 is reserved so a zeroed buffer never parses.
CODEC_IDS: dict[str, int] = {"cadc": 1, "jpeg": 2, "webp": 3, "avif": 4, "jxl": 5}
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODEC_IDS.items()}


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (used as the symbol checksum)."""
    return _crc16(bytes(data))


def scaled_size(width: int, height: int, scale_code: int) -> tuple[int, int]:
    """Size an image of ``width`` x ``height`` is coded at for ``scale_code``."""
    f = 2.0 ** (-scale_code / 8.0)
    return max(1, round(width * f)), max(1, round(height * f))


def scale_code_within(width: int, height: int, max_pixels: int) -> int:
    """The smallest scale code (the largest coded size) at which the image has at most ``max_pixels`` pixels."""
    code = max(0, math.floor(4.0 * math.log2(width * height / max_pixels)))  # a guess from the area, then exact
    while code > 0 and math.prod(scaled_size(width, height, code - 1)) <= max_pixels:
        code -= 1
    while math.prod(scaled_size(width, height, code)) > max_pixels:
        code += 1
    return code


@dataclass(frozen=True)
class Header:
    """The parsed fixed header of a bitstream."""

    codec_id: int
    model_id: int
    width: int
    height: int
    scale_code: int
    lam_code: int
    delta_code: int
    checksum: int
    version: int = VERSION

    def check_value(self, protected: bytes) -> int:
        """The checksum this header should carry over ``protected`` (what the codec covers with it).

        v2 covers the header's own fields too; v1 covered ``protected`` only.
        """
        if self.version == 1:
            return crc16(protected)
        return crc16(self.pack(checksum=0)[: HEADER_SIZE - 2] + bytes(protected))

    def with_checksum(self, protected: bytes) -> "Header":
        """This header with :meth:`check_value` filled in."""
        return replace(self, checksum=self.check_value(protected))

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec_id, f"unknown({self.codec_id})")

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the image actually coded, after downscaling."""
        return scaled_size(self.width, self.height, self.scale_code)

    def pack(self, checksum: int | None = None) -> bytes:
        """The 12 header bytes (``checksum`` overrides the field, e.g. 0 while computing it)."""
        checksum = self.checksum if checksum is None else checksum
        if self.version not in SUPPORTED_VERSIONS:
            raise BitstreamError(f"header version {self.version} is not one of {SUPPORTED_VERSIONS}")
        for name, value, hi in (
            ("codec_id", self.codec_id, 15),
            ("model_id", self.model_id, 0xFFFF),
            ("width", self.width, 0xFFFF),
            ("height", self.height, 0xFFFF),
            ("scale_code", self.scale_code, 255),
            ("lam_code", self.lam_code, 255),
            ("delta_code", self.delta_code, 255),
            ("checksum", checksum, 0xFFFF),
        ):
            if not 0 <= int(value) <= hi:
                raise BitstreamError(f"header field {name}={value} is outside 0..{hi}")
        if self.width < 1 or self.height < 1:
            raise BitstreamError(f"image size {self.width}x{self.height} must be at least 1x1")
        return _STRUCT.pack(
            (self.version << 4) | self.codec_id,
            self.model_id,
            self.width,
            self.height,
            self.scale_code,
            self.lam_code,
            self.delta_code,
            checksum,
        )


def pack(header: Header, payload: bytes) -> bytes:
    """A whole bitstream: header then payload."""
    return header.pack() + bytes(payload)


def unpack(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Header, bytes]:
    """Parse and validate a bitstream's header; returns (header, payload).

    Raises :class:`BitstreamError` for anything malformed: too short, wrong
    version, unknown codec, zero or absurd image size.
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise BitstreamError(
            f"bitstream is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header; it is truncated"
        )
    b0, model_id, width, height, scale_code, lam_code, delta_code, checksum = _STRUCT.unpack_from(data)
    version, codec_id = b0 >> 4, b0 & 0x0F
    if version not in SUPPORTED_VERSIONS:
        raise BitstreamError(
            f"bitstream format version {version} is not supported (this build reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); decode it with the satgw release that wrote it"
        )
    if codec_id not in CODEC_NAMES:
        raise BitstreamError(f"unknown codec id {codec_id} in bitstream header")
    if width < 1 or height < 1 or width * height > max_pixels:
        raise BitstreamError(
            f"header claims a {width}x{height} image; sizes must be at least 1x1 and at most {max_pixels} pixels"
        )
    header = Header(codec_id, model_id, width, height, scale_code, lam_code, delta_code, checksum, version)
    return header, data[HEADER_SIZE:]
