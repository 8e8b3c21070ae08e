"""The ground station's start-up check of its decoders: a broken model bundle stops it before it takes a frame.

A bundle that loads can still be broken (a truncated or altered weight
file loads without complaint and then decodes every picture to noise, or
to a different model id than the sender's). So the check loads the CADC
bundle the ground will decode with and sends a small test picture through
it, encode and decode, and wants a finite picture of the right size that
resembles the original. It runs where decodes run (in the decode worker's
child process, which then keeps the model loaded for the first message).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gateway.errors import BundleError

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
        codec = get_codec("cadc", bundle)
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
