"""Shared pieces of the CADC codec tests: a test picture and a random model whose λ moves the rate."""

from __future__ import annotations

import numpy as np
import torch


def textured_image(h: int = 192, w: int = 256, seed: int = 0) -> np.ndarray:
    """Gradients, a sinusoid and noise: enough structure for every rate to code something different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0.4 * np.sin(xx / 9.0 + yy / 13.0)], axis=-1) * 220
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def widen_gains(model: torch.nn.Module, high: float, low: float = 3.0) -> None:
    """Spread a random model's log gains over [low, high] across the λ levels.

    Untrained, g_a's output is so small that every symbol rounds to 0 whatever
    λ is; widened gains make λ move the rate like a trained model's.
    """
    with torch.no_grad():
        k = model.log_gain.shape[0]
        model.log_gain.copy_(torch.linspace(high, low, k).view(k, 1).expand_as(model.log_gain))


def widened_tiny_codec(folder: "Path", color_layer: list | None = None) -> "CADCCodec":
    """A random-init cadc-tiny bundle saved under ``folder`` and loaded, its λ gains widened so every layer holds
    real symbols; ``color_layer``: the colour policy's rows (None: the config's)."""
    from pathlib import Path

    from gateway.codec.cadc.bundle import create_bundle, load_model
    from gateway.codec.cadc.codec import CADCCodec
    from gateway.codec.cadc.color_layer import ColorLayerPolicy

    torch.manual_seed(0)
    tiny_yaml = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml"
    model = load_model(create_bundle(tiny_yaml, Path(folder) / "tiny"))
    widen_gains(model, 6.0)
    codec = CADCCodec(model)
    if color_layer is not None:
        codec.color_policy = ColorLayerPolicy.from_config(color_layer)
    return codec
