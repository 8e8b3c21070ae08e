"""The ground station's start-up check of its decoders: a broken model bundle stops it before it takes a frame.

A bundle that loads can still be broken (a truncated or altered weight
file loads without complaint and then decodes every picture to noise, or
to a different model id than the sender's). So the check loads the CADC
bundle the ground will decode with and sends a small test picture through
it, encode and decode, and wants a finite picture of the right size that
resembles the original. It runs where decodes run (in the decode worker's
child process, which then keeps the model loaded for the first message).

The round trip costs seconds (torch, the model), so a bundle whose exact
bytes passed it before on this host is not checked again: a fingerprint of
every file in the bundle folder (:func:`fingerprint`) is remembered in
``~/.cache/satgw/bundle-checks.json`` (``$XDG_CACHE_HOME`` respected). Any
changed, added or damaged file changes the fingerprint, and the bundle is
checked in full again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import BundleError

#: Part of every fingerprint: a change to the check itself invalidates what was remembered.
CHECK_VERSION = "2"  # 2: the round trip without the colour layer

#: The embedded cadc-tiny reproduces the test picture at about 15.6 dB; with damaged VAE weights it gives 4.6 dB.
MIN_PSNR_DB = 10.0
_SIZE = 64


def test_picture(size: int = _SIZE) -> np.ndarray:
    """A smooth picture with edges (gradients, a disc, a bar): what any working image codec reproduces."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.06).astype(np.float32)
    bar = ((y > 0.7) & (y < 0.85)).astype(np.float32)
    r = 40 + 150 * x + 50 * disc
    g = 60 + 120 * y + 60 * bar
    b = 200 - 120 * x * y + 30 * disc
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pictures of one size."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def check_decoders(bundle: str | None) -> dict[str, Any]:
    """Load the CADC bundle and round-trip :func:`test_picture` through it; BundleError says what is broken.

    Returns what was checked (the model id and the PSNR reached), or that CADC is not installed here.
    """
    from gateway.codec.base import Knobs
    from gateway.codec.registry import available_codecs, get_codec

    name = bundle or "the embedded cadc-tiny"
    if "cadc" not in available_codecs():
        return {"cadc": "not installed"}
    try:
        # Format 2, without the colour layer: that layer lays the test picture's own cell means onto whatever
        # the model makes, which would lift even a damaged VAE's noise over the PSNR bar.  (A shallow copy: the
        # shared codec's weights, its own format setting.)
        codec = copy.copy(get_codec("cadc", bundle))
        codec.bitstream_version = 2
        space = codec.search_space()
        delta = codec.rate_anchor_delta_code
        knobs = Knobs(space.lam_codes[0], space.delta_codes[0] if delta is None else delta, 0)
        picture = test_picture()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # damaged weights overflow; the PSNR check says so
            bits = codec.encode(codec.analyze(picture), knobs, (_SIZE, _SIZE))
            out = codec.decode(bits)
    except BundleError as e:
        raise BundleError(f"the CADC model bundle ({name}) is broken: {e}") from e
    except Exception as e:  # whatever torch or the bundle raises: the bundle is not usable
        raise BundleError(f"the CADC model bundle ({name}) does not decode a test picture: "
                          f"{type(e).__name__}: {e}") from e
    if not (isinstance(out, np.ndarray) and out.shape == picture.shape and out.dtype == np.uint8):
        raise BundleError(f"the CADC model bundle ({name}) decodes a {_SIZE}x{_SIZE} test picture to "
                          f"{getattr(out, 'shape', type(out).__name__)}; the bundle is broken")
    quality = float(psnr_db(picture, out))
    if quality < MIN_PSNR_DB:
        raise BundleError(f"the CADC model bundle ({name}) decodes a test picture at {quality:.1f} dB PSNR "
                          f"(a working one gives 15 dB or more): its weights are damaged; "
                          "reinstall the bundle")
    return {"cadc": {"model_id": f"{codec.model_id:04x}", "psnr_db": round(quality, 2), "bits": len(bits)}}


def fingerprint(bundle: str | None) -> str | None:
    """A hash of every file (names and bytes) of the bundle folder, or None when there is no folder to read."""
    from gateway.paths import bundle_dir

    root = Path(bundle) if bundle else bundle_dir("cadc-tiny")
    if not root.is_dir():
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(CHECK_VERSION.encode())
    try:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    except OSError:
        return None  # unreadable: the full check will say what is wrong
    return h.hexdigest()


class CheckCache:
    """Fingerprints of bundles that passed :func:`check_decoders` on this host, with what the check found."""

    def __init__(self, path: Path | None = None) -> None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = path or base / "satgw" / "bundle-checks.json"

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str | None) -> dict[str, Any] | None:
        """What the check found for fingerprint ``key`` before, or None."""
        found = self._load().get(key) if key else None
        return found if isinstance(found, dict) else None

    def put(self, key: str | None, result: dict[str, Any]) -> None:
        """Remember that fingerprint ``key`` passed (best effort: a read-only home just means no memory)."""
        if not key:
            return
        from gateway.codec.image_io import write_atomic

        data = self._load()
        data[key] = result
        try:
            write_atomic(self.path, json.dumps(dict(list(data.items())[-64:]), indent=1).encode())
        except OSError:
            pass
