"""Codec names -> codec objects, and decoding any bitstream by its header.

CADC is imported only when asked for, so the classical codecs (and every tool
that only needs them) work without torch models or a bundle.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from gateway.codec import bitstream
from gateway.codec.base import Codec
from gateway.codec.classical import CLASSICAL_CODECS
from gateway.errors import ConfigError

CODEC_NAMES: tuple[str, ...] = ("cadc", "avif", "jxl", "webp", "jpeg")

_cache: dict[tuple[str, str], Codec] = {}
_cache_lock = threading.Lock()


def available_codecs() -> list[str]:
    """Names :func:`make_codec` accepts here (``cadc`` only when its module is installed)."""
    names = list(CODEC_NAMES)
    if importlib.util.find_spec("gateway.codec.cadc.codec") is None:
        names.remove("cadc")
    return names


def make_codec(name: str, **options: Any) -> Codec:
    """A new codec by name.

    ``cadc`` takes ``bundle`` (a bundle folder; ``None`` = the embedded
    cadc-tiny).  Classical codecs ignore ``bundle`` and accept their encoder
    options (``speed`` for avif, ``effort`` for jxl, ``method`` for webp).
    Raises :class:`ConfigError` for an unknown name or option.
    """
    key = str(name).lower()
    if key == "cadc":
        from gateway.codec.cadc.codec import CADCCodec

        return CADCCodec.from_bundle(options.get("bundle"))
    if key in CLASSICAL_CODECS:
        options.pop("bundle", None)
        return CLASSICAL_CODECS[key](**options)
    raise ConfigError(f"unknown codec {name!r}; valid codecs: {', '.join(CODEC_NAMES)}")


def codec_name_for(data: bytes) -> str:
    """Name of the codec that wrote ``data`` (from its header; raises BitstreamError if malformed)."""
    header, _ = bitstream.unpack(data)
    return header.codec_name


def get_codec(name: str, bundle: str | Path | None = None) -> Codec:
    """The process-wide shared instance of codec ``name`` (a daemon loads a CADC bundle once)."""
    key = (name, str(bundle) if name == "cadc" else "")
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make_codec(name, bundle=bundle)
        return _cache[key]


def decode_any(data: bytes, codecs: dict[str, Codec] | None = None, bundle: str | Path | None = None) -> np.ndarray:
    """Decode a bitstream with whichever codec its header names.

    Codecs are created on first use and kept in ``codecs`` (or, when it is
    ``None``, in the process-wide cache of :func:`get_codec`).  Malformed input
    raises :class:`gateway.errors.BitstreamError` (or a subclass).
    """
    name = codec_name_for(data)
    if codecs is None:
        return get_codec(name, bundle).decode(data)
    if name not in codecs:
        codecs[name] = make_codec(name, bundle=bundle)
    return codecs[name].decode(data)
