"""What the CADC quality predictor knows about one coded picture: its features, by name.

Everything here is cheap on a sender (no UNet, no VAE): the quality of the
auxiliary reconstruction x̂_aux against the original, what the bitstream
cost, the knobs the rate controller chose, and two statistics of the
original that say how hard it is to code (busy texture: high gradient
energy; saturated colour, which an 8-channel latent renders less faithfully).
The calibration (:mod:`gateway.codec.cadc.quality_calibration`) maps them to
the ground's MS-SSIM and PSNR; its file names the features it was fitted on.
"""

from __future__ import annotations

import math

import numpy as np

#: Every feature, in the order a calibration stores its coefficients by default.
FEATURES: tuple[str, ...] = (
    "aux_ms_ssim",  # MS-SSIM of x̂_aux (restored to the original size) against the original
    "aux_psnr",  # PSNR of the same, dB
    "log2_bpp",  # log2 of the bitstream's bits per original pixel
    "log_lam",  # ln λ of the chosen setting
    "delta",  # Δ of the chosen setting
    "scale",  # coded side / original side (1: not downscaled)
    "log_gradient",  # ln of the original's mean absolute luma gradient (pixel values 0..1)
    "colourfulness",  # Hasler and Süsstrunk's colourfulness of the original (pixel values 0..1)
)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """``log_gradient`` and ``colourfulness`` of an HxWx3 uint8 picture (measure a reduced copy of a big one)."""
    rgb = image.astype(np.float32) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx = np.abs(np.diff(luma, axis=1)).mean() if luma.shape[1] > 1 else 0.0
    gy = np.abs(np.diff(luma, axis=0)).mean() if luma.shape[0] > 1 else 0.0
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))
    # A flat picture has no gradient: floor it so the logarithm stays finite.
    return {"log_gradient": math.log(max(float(gx + gy) / 2.0, 1e-4)), "colourfulness": colourfulness}


def coding_features(nbytes: int, pixels: int, lam: float, delta: float, scale: float) -> dict[str, float]:
    """The features of what was coded: ``nbytes`` of bitstream for ``pixels`` original pixels at λ, Δ, scale."""
    return {
        "log2_bpp": math.log2(max(nbytes * 8.0 / pixels, 1e-6)),
        "log_lam": math.log(lam),
        "delta": float(delta),
        "scale": float(scale),
    }


def aux_features(aux_quality: dict[str, float]) -> dict[str, float]:
    """The features of x̂_aux's measured quality (``{"ms_ssim", "psnr"}``)."""
    return {"aux_ms_ssim": float(aux_quality["ms_ssim"]), "aux_psnr": float(aux_quality["psnr"])}
