"""Classical image codecs (JPEG, WebP, AVIF, JPEG XL) through Pillow.

They are the baselines CADC is measured against, so each one gets the same
treatment CADC gets: the same 12-byte header (:mod:`gateway.codec.bitstream`),
the same rate controller, and a payload with every byte a decoder can do
without taken out, because at one 432-byte frame a 275-byte container is most
of the budget:

* JPEG: the file minus its APPn/COM segments (JFIF, EXIF, ICC), optimized
  Huffman tables;
* WebP: the bare ``VP8`` chunk; the 20-byte RIFF wrapper is rebuilt on decode;
* AVIF: the file, raw-deflated against a fixed dictionary holding a typical
  libavif container (``ftyp``/``meta``/``mdat`` boxes and AV1 sequence
  header), which shrinks the ~275 bytes of boxes to a few dozen while leaving
  the AV1 data as it is;
* JPEG XL: the naked codestream (no ISOBMFF container, no metadata boxes).

Knobs: ``lam_code`` is the Pillow quality (0..100, JPEG XL 0..99 because its
100 means lossless), ``delta_code`` is always 0, ``scale_code`` says how far
the image given to :meth:`ClassicalCodec.analyze` was downscaled; the decoder
scales back to the original size in the header with Lanczos.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from gateway.codec import bitstream
from gateway.codec.base import Codec, Knobs, SearchSpace
from gateway.codec.image_io import as_rgb_array, resize_rgb
from gateway.errors import BitstreamError, ChecksumMismatch, CodecError, ConfigError

try:  # Pillow >= 11.3 reads and writes AVIF itself; the plugin covers older builds.
    import pillow_avif  # noqa: F401
except ImportError:  # pragma: no cover - depends on the installed Pillow
    pass
import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)


class ClassicalCodec(Codec):
    """A Pillow-backed codec; subclasses set the format and payload packing."""

    pil_format: ClassVar[str]
    max_quality: ClassVar[int] = 100
    #: Decoding is cheap (milliseconds), so the rate controller may decode
    #: candidates to compare the real distortion of different downscales.
    fast_decode = True
    #: Encoder options a caller may override (name -> default).
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            valid = ", ".join(sorted(self.default_options)) or "none"
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} for codec {self.name}; valid options: {valid}")
        self.options = {**self.default_options, **options}

    def search_space(self) -> SearchSpace:
        """Quality from best to worst, no Δ, downscales in half-area steps."""
        return SearchSpace(lam_codes=tuple(range(self.max_quality, -1, -1)))

    def analyze(self, image: np.ndarray) -> Image.Image:
        """Validate the array and wrap it as a PIL image (classical codecs have no analysis transform)."""
        return Image.fromarray(as_rgb_array(image), "RGB")

    def encode(self, analysis: Image.Image, knobs: Knobs, original_size: tuple[int, int]) -> bytes:
        """Header + stripped codec payload for the (already downscaled) image in ``analysis``."""
        if not 0 <= knobs.lam_code <= self.max_quality:
            raise CodecError(f"{self.name} quality {knobs.lam_code} is outside 0..{self.max_quality}")
        expected = bitstream.scaled_size(*original_size, knobs.scale_code)
        if analysis.size != expected:
            raise CodecError(
                f"analysis is {analysis.size[0]}x{analysis.size[1]} but scale_code {knobs.scale_code} of "
                f"{original_size[0]}x{original_size[1]} codes {expected[0]}x{expected[1]}; "
                "analyze the image downscaled with bitstream.scaled_size"
            )
        buf = io.BytesIO()
        analysis.save(buf, self.pil_format, quality=knobs.lam_code, **self.options)
        payload = self._strip(buf.getvalue())
        header = bitstream.Header(
            codec_id=self.codec_id,
            model_id=0,
            width=original_size[0],
            height=original_size[1],
            scale_code=knobs.scale_code,
            lam_code=knobs.lam_code,
            delta_code=0,
            checksum=0,
        ).with_checksum(payload)
        return bitstream.pack(header, payload)

    def decode(self, data: bytes) -> np.ndarray:
        """Decode to an HxWx3 uint8 array at the original size; malformed input raises BitstreamError."""
        header, payload = bitstream.unpack(data)
        if header.codec_id != self.codec_id:
            raise BitstreamError(
                f"bitstream was made by codec {header.codec_name!r}, not {self.name!r}; decode it with registry.decode_any"
            )
        if header.check_value(payload) != header.checksum:
            raise ChecksumMismatch(
                f"{self.name} checksum {header.check_value(payload):04x} != header {header.checksum:04x}: "
                "the header or payload is corrupted (or truncated); request it again"
            )
        coded = header.coded_size
        file_bytes = self._unstrip(payload, coded)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(file_bytes), formats=[self.pil_format]) as im:
                    # Check the embedded size before decoding pixels so a forged
                    # payload cannot make us allocate more than the header allows.
                    if im.size != coded:
                        raise BitstreamError(
                            f"{self.name} payload holds a {im.size[0]}x{im.size[1]} image but the header "
                            f"says {coded[0]}x{coded[1]}; the bitstream is corrupted"
                        )
                    rgb = np.asarray(im.convert("RGB"))
        except BitstreamError:
            raise
        except Exception as exc:  # Pillow and its plugins raise many types on bad data
            raise BitstreamError(f"{self.name} payload does not decode ({type(exc).__name__}: {exc})") from exc
        if rgb.shape[:2] != (coded[1], coded[0]):
            raise BitstreamError(f"{self.name} payload decoded to shape {rgb.shape}, expected {coded[1]}x{coded[0]}")
        return resize_rgb(rgb, (header.width, header.height))

    def describe(self, knobs: Knobs) -> dict[str, Any]:
        """Quality and downscale factor of ``knobs``."""
        return {
            "quality": knobs.lam_code,
            "scale_code": knobs.scale_code,
            "scale": 2.0 ** (-knobs.scale_code / 8.0),
        }

    # Payload packing: file bytes <-> the bytes that go on the link.
    def _strip(self, file_bytes: bytes) -> bytes:
        return file_bytes

    def _unstrip(self, payload: bytes, coded_size: tuple[int, int]) -> bytes:
        return payload


_JPEG_STANDALONE = {0xD8, 0x01} | set(range(0xD0, 0xD8))


class JpegCodec(ClassicalCodec):
    """Baseline JPEG (libjpeg through Pillow) with optimized Huffman tables and no APPn segments."""

    name = "jpeg"
    codec_id = bitstream.CODEC_IDS["jpeg"]
    pil_format = "JPEG"
    default_options: ClassVar[dict[str, Any]] = {"optimize": True, "subsampling": "4:2:0"}

    def _strip(self, file_bytes: bytes) -> bytes:
        # Drop APP0..APP15 (JFIF, EXIF, ICC) and COM segments: decoders need none of them.
        out = bytearray(file_bytes[:2])
        pos = 2
        while pos + 4 <= len(file_bytes):
            if file_bytes[pos] != 0xFF:
                break
            marker = file_bytes[pos + 1]
            if marker == 0xDA:  # start of scan: entropy-coded data follows to the end
                out += file_bytes[pos:]
                return bytes(out)
            (length,) = struct.unpack_from(">H", file_bytes, pos + 2)
            segment = file_bytes[pos : pos + 2 + length]
            if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
                out += segment
            pos += 2 + length
        raise CodecError("libjpeg output has no start-of-scan segment; cannot strip it")


class WebpCodec(ClassicalCodec):
    """Lossy WebP (libwebp VP8) at its slowest, smallest method; the RIFF wrapper is not sent."""

    name = "webp"
    codec_id = bitstream.CODEC_IDS["webp"]
    pil_format = "WEBP"
    default_options: ClassVar[dict[str, Any]] = {"method": 6}

    def _strip(self, file_bytes: bytes) -> bytes:
        # A simple lossy WebP is RIFF(size) WEBP 'VP8 '(size) data [pad]: keep only data.
        if file_bytes[:4] != b"RIFF" or file_bytes[8:16] != b"WEBPVP8 ":
            raise CodecError("libwebp did not write a simple lossy VP8 file; cannot strip its RIFF wrapper")
        (size,) = struct.unpack_from("<I", file_bytes, 16)
        return file_bytes[20 : 20 + size]

    def _unstrip(self, payload: bytes, coded_size: tuple[int, int]) -> bytes:
        pad = b"\0" * (len(payload) & 1)
        chunk = b"VP8 " + struct.pack("<I", len(payload)) + payload + pad
        return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# A libavif (1.x) container for a small 8-bit 4:2:0 image: ftyp, meta (hdlr,
# pitm, iloc, iinf, iprp with ispe/pixi/av1C/colr, ipma), the mdat box header
# and the start of an AV1 temporal unit (temporal delimiter + sequence header).
# Deflate finds most of every new container in it.  It is part of the format:
# changing a byte here makes old AVIF bitstreams undecodable.
_AVIF_DICTIONARY = bytes.fromhex(
    "00000020667479706176696600000000617669666d6966316d6961664d413142000000eb6d657461"
    "000000000000002168646c72000000000000000070696374000000000000000000000000000000000e"
    "7069746d0000000000010000001e696c6f63000000004400000100010000000100000113000001a500"
    "00002869696e660000000000010000001a696e6665020000000001000061763031436f6c6f72000000"
    "006a697072700000004b6970636f0000001469737065000000000000004000000030000000107069"
    "786900000000030808080000000c6176314381000c0000000013636f6c726e636c780001000d0006"
    "800000001769706d61000000000000000100010401028304000001ad6d64617412000a0918157fbda2"
    "021a0d08329503"
)
_MAX_AVIF_INFLATE = 64 << 20  # no AVIF we write at <= 64 MP comes near this; bounds a deflate bomb


class AvifCodec(ClassicalCodec):
    """AVIF (libavif/aom through Pillow); the container is deflated against a fixed dictionary."""

    name = "avif"
    codec_id = bitstream.CODEC_IDS["avif"]
    pil_format = "AVIF"
    # A rate-controlled encode runs 15-20 encodes; speed 8 is 3-4x faster than speed 6 and loses
    # 0.2-0.45 dB PSNR at the same budget (figures in docs/ratecontrol.md).
    default_options: ClassVar[dict[str, Any]] = {"speed": 8}

    def _strip(self, file_bytes: bytes) -> bytes:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _AVIF_DICTIONARY)
        return comp.compress(file_bytes) + comp.flush()

    def _unstrip(self, payload: bytes, coded_size: tuple[int, int]) -> bytes:
        try:
            inflater = zlib.decompressobj(-15, _AVIF_DICTIONARY)
            out = inflater.decompress(payload, _MAX_AVIF_INFLATE)
            if inflater.unconsumed_tail or not inflater.eof:
                raise BitstreamError("avif payload is truncated or inflates past the size limit")
        except zlib.error as exc:
            raise BitstreamError(f"avif payload is not valid deflate data ({exc})") from exc
        return out


class JxlCodec(ClassicalCodec):
    """JPEG XL (libjxl through pillow-jxl-plugin) as a naked codestream."""

    name = "jxl"
    codec_id = bitstream.CODEC_IDS["jxl"]
    pil_format = "JXL"
    max_quality = 99  # libjxl's quality 100 is lossless mode, a different encoder path
    default_options: ClassVar[dict[str, Any]] = {"effort": 7, "use_container": False}


CLASSICAL_CODECS: dict[str, type[ClassicalCodec]] = {
    cls.name: cls for cls in (JpegCodec, WebpCodec, AvifCodec, JxlCodec)
}
