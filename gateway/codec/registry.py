"""Codec names -> codec objects, and decoding any bitstream by its header.

CADC is imported only when asked for, so the classical codecs (and every tool
that only needs them) work without torch models or a bundle.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gateway.codec import bitstream
from gateway.codec.base import Codec
from gateway.codec.classical import CLASSICAL_CODECS
from gateway.errors import BundleError, ConfigError, ModelMismatch

CODEC_NAMES: tuple[str, ...] = ("cadc", "avif", "jxl", "webp", "jpeg")

_cache: dict[tuple[Any, ...], Codec] = {}
#: bundle folder -> its model id (read once per process: the manifest, or a hash of the weights)
_model_ids: dict[str, int] = {}
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
    cadc-tiny), ``device`` (``auto`` | ``cpu`` | ``cuda[:n]``; default
    ``auto``), ``precision`` (of the pretrained parts on a GPU; default
    ``auto``) and ``encoder_only`` (the sender: load only what encoding needs,
    no UNet, VAE or text models; then it cannot decode pictures) and
    ``refine`` (gradient steps of encoder-side refinement per chosen setting,
    :mod:`gateway.codec.cadc.refine`; 0 = off; on, the whole model is loaded,
    ``encoder_only`` notwithstanding, and it stays on the CPU).  Classical
    codecs ignore those and accept their encoder options (``speed`` for avif,
    ``effort`` for jxl, ``method`` for webp).  Raises :class:`ConfigError` for
    an unknown name or option.
    """
    key = str(name).lower()
    if key == "cadc":
        from gateway.codec.cadc.codec import CADCCodec

        from gateway.codec.cadc.refine import RefineSettings

        refine = int(options.get("refine") or 0)
        if refine < 0:
            raise ConfigError(f"refine must be >= 0 gradient steps, got {refine}")
        encoder_only = bool(options.get("encoder_only", False)) and not refine
        # The sender's encoder stays on the CPU unless told otherwise: it is light, and a sender host has no GPU.
        device = options.get("device") or ("cpu" if encoder_only or refine else "auto")
        codec = CADCCodec.from_bundle(options.get("bundle"), device=device, precision=options.get("precision"),
                                      encoder_only=encoder_only)
        if refine:
            codec.refine_settings = RefineSettings(iterations=refine)
        return codec
    if key in CLASSICAL_CODECS:
        for cadc_only in ("bundle", "device", "precision", "encoder_only", "refine"):
            options.pop(cadc_only, None)
        return CLASSICAL_CODECS[key](**options)
    raise ConfigError(f"unknown codec {name!r}; valid codecs: {', '.join(CODEC_NAMES)}")


def codec_name_for(data: bytes) -> str:
    """Name of the codec that wrote ``data`` (from its header; raises BitstreamError if malformed)."""
    header, _ = bitstream.unpack(data)
    return header.codec_name


def get_codec(name: str, bundle: str | Path | None = None, *, device: str | None = None,
              precision: str | None = None, encoder_only: bool = False, refine: int = 0) -> Codec:
    """The process-wide shared instance of codec ``name`` (a daemon loads a CADC bundle once).

    Options as for :func:`make_codec`; each distinct set of them is one instance.
    """
    key = (name, str(bundle), device, precision, encoder_only, refine) if name == "cadc" \
        else (name, "", None, None, False, 0)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make_codec(name, bundle=bundle, device=device, precision=precision, encoder_only=encoder_only,
                                     refine=refine)
        return _cache[key]


def decoder_for(header: bitstream.Header, bundles: Sequence[str | Path | None] = (None,), *,
                device: str | None = None, precision: str | None = None) -> Codec:
    """The shared decoder of a bitstream: its header's codec and, for CADC, the bundle of its model id.

    ``bundles`` are the CADC bundle folders this host keeps (None: every
    embedded model, :func:`gateway.paths.embedded_bundles`); the one whose
    model id the header names decodes, so pictures encoded before a model
    update, or by another rung of the sender's model ladder, still decode.  Raises
    :class:`ModelMismatch` naming the missing id and the ids at hand.
    """
    if header.codec_name != "cadc":
        return get_codec(header.codec_name)
    from gateway.codec.cadc.bundle import bundle_model_id
    from gateway.paths import bundle_dir

    known: list[str] = []
    for bundle in cadc_bundles(bundles):
        folder = Path(bundle) if bundle is not None else bundle_dir("cadc-tiny")
        mid = _model_ids.get(str(folder))
        if mid is None:
            try:
                mid = _model_ids[str(folder)] = bundle_model_id(folder)
            except (OSError, BundleError) as exc:
                known.append(f"{folder} (unreadable: {exc})")
                continue
        if mid == header.model_id:
            return get_codec("cadc", bundle, device=device, precision=precision)
        known.append(f"{folder} ({mid:04x})")
    raise ModelMismatch(
        f"bitstream was made by model {header.model_id:04x}, and none of this host's CADC bundles is that model: "
        f"{'; '.join(known)}; add the bundle that encoded it to the 'bundles' list of the ground-station config "
        "(or pass it with --bundle)"
    )


def cadc_bundles(bundles: Sequence[str | Path | None]) -> list[str | Path | None]:
    """``bundles`` with None (the embedded model) standing for every embedded model, each folder once."""
    from gateway.paths import embedded_bundles

    out: dict[str, str | Path | None] = {}
    for bundle in bundles or (None,):
        for b in (embedded_bundles() if bundle is None else (bundle,)):
            out.setdefault(str(b), b)
    return list(out.values())


def decode_any(data: bytes, codecs: dict[str, Codec] | None = None, bundle: str | Path | None = None) -> np.ndarray:
    """Decode a bitstream with whichever codec its header names.

    Codecs are created on first use and kept in ``codecs`` (or, when it is
    ``None``, in the process-wide cache of :func:`get_codec`).  Malformed input
    raises :class:`gateway.errors.BitstreamError` (or a subclass).
    """
    header, _ = bitstream.unpack(data)
    name = header.codec_name
    if codecs is None:  # CADC: the bundle of the header's model id (``bundle``, or any embedded model)
        return decoder_for(header, (bundle,)).decode(data)
    if name not in codecs:
        codecs[name] = make_codec(name, bundle=bundle)
    return codecs[name].decode(data)
