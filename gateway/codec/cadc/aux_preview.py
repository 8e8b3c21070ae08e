"""ADGIC's auxiliary reconstruction x̂_aux on the sender: ``g_s`` and the auxiliary decoder, nothing else.

The ground station's picture comes out of the UNet and the VAE decoder,
which a sender never loads.  What a sender can afford is the part before
them: ``g_s`` (ŷ -> l_T) and ADGIC's light auxiliary decoder on
``l_T[:k]`` -- together well under a million parameters for cadc-tiny, read
from the same ``codec.safetensors`` the encoder comes from.  x̂_aux is what
the CADC quality predictor (:mod:`gateway.codec.cadc.quality_predictor`)
measures against the original to tell how good the ground's picture will be.

The reconstruction runs in tiles of ŷ, each with a halo wide enough that g_s
and the auxiliary decoder compute exactly what a whole-picture pass would
(:func:`~gateway.codec.cadc.tiled_synthesis.synthesis_halo`), so a 24 MP
picture costs the memory of one tile, not of the picture.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.layers import AuxDecoder, SynthesisTransform
from gateway.codec.cadc.tile_grid import Span, cores, spans
from gateway.codec.cadc.tiled_synthesis import AUX_HALO, LATENT_SCALE, synthesis_halo, to_uint8
from gateway.errors import BundleError

#: Pixels per tile side (before the halo): a Kodak picture is one tile, and the auxiliary decoder's
#: full-resolution activations of a tile with its halo stay under ~200 MB for cadc-tiny.
TILE_PIXELS = 768
#: Tensor name prefixes in codec.safetensors of the two networks.
AUX_MODULES = ("g_s", "aux_decoder")


class AuxPreviewNets(nn.Module):
    """``g_s`` and the ADGIC auxiliary decoder of one model (``latent_primary``: the channels x̂_aux reads)."""

    def __init__(self, g_s: nn.Module, aux_decoder: nn.Module, latent_primary: int, config: CADCConfig) -> None:
        super().__init__()
        self.g_s = g_s
        self.aux_decoder = aux_decoder
        self.latent_primary = latent_primary
        self.config = config

    @classmethod
    def build(cls, config: CADCConfig) -> "AuxPreviewNets":
        """Randomly initialised networks of ``config`` (weights come from :func:`load_aux_preview`)."""
        c = config.codec
        if not c.adgic:
            raise BundleError(f"model {config.name} has no auxiliary decoder (codec.adgic is false)")
        g_s = SynthesisTransform(c.y_channels, c.synthesis_width, c.latent_channels, n_up=c.n_down - 3,
                                 blocks=c.transform_blocks)
        return cls(g_s, AuxDecoder(c.aux_widths, config.vae_latent_channels), config.vae_latent_channels, config)

    @classmethod
    def of_model(cls, model: nn.Module) -> "AuxPreviewNets":
        """The networks of a loaded whole model (a ground-side codec), shared, not copied."""
        if getattr(model, "aux_decoder", None) is None:
            raise BundleError(f"model {model.config.name} has no auxiliary decoder (codec.adgic is false)")
        return cls(model.g_s, model.aux_decoder, model.latent_primary, model.config)


def load_aux_preview(path: str | Path, config: CADCConfig, device: str | torch.device = "cpu") -> AuxPreviewNets:
    """The ``g_s`` and auxiliary-decoder tensors of the bundle at ``path``, and only those, as networks.

    Raises :class:`BundleError` naming the file when it is missing, unreadable
    or does not hold the networks ``config`` describes.
    """
    from gateway.codec.cadc.bundle import CODEC_WEIGHTS

    nets = AuxPreviewNets.build(config)
    weights = Path(path) / CODEC_WEIGHTS
    if not weights.is_file():
        raise BundleError(f"model bundle {path} is missing part(s): 'codec' (looked for {weights})")
    try:
        with safe_open(str(weights), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if k.split(".")[0] in AUX_MODULES}
    except Exception as exc:  # safetensors raises several types on a damaged file
        raise BundleError(f"model bundle part 'codec' ({weights}) is unreadable: {exc}") from exc
    expected = {k: v.shape for k, v in nets.state_dict().items() if k.split(".")[0] in AUX_MODULES}
    if set(state) != set(expected) or any(state[k].shape != shape for k, shape in expected.items()):
        raise BundleError(
            f"model bundle part 'codec' ({weights}) does not hold the g_s and auxiliary decoder of "
            f"{config.name}: its tensors do not match the config"
        )
    nets.load_state_dict(state, strict=False)
    # The auxiliary decoder's convs run at full resolution: channels_last is ~2x faster there on a CPU.
    return nets.to(device, memory_format=torch.channels_last).eval()


@torch.no_grad()
def aux_picture(nets: AuxPreviewNets, y_hat: torch.Tensor, inv_gain: torch.Tensor,
                coded_size: tuple[int, int]) -> np.ndarray:
    """x̂_aux of ŷ ([1, N, h, w], λ gain still applied; ``inv_gain`` [1, N]) as an HxWx3 uint8 picture.

    ``coded_size`` = (width, height) of the coded picture; ŷ's padding is cut off.
    """
    cfg = nets.config.codec
    per_y = cfg.y_downsample  # pixels per ŷ position
    # g_s's own reach, plus the auxiliary decoder's (in latent positions) in ŷ positions.
    halo = synthesis_halo(cfg) + math.ceil(AUX_HALO * LATENT_SCALE / per_y)
    hy, wy = y_hat.shape[-2:]
    tile = max(1, TILE_PIXELS // per_y)
    width, height = coded_size
    out = np.zeros((hy * per_y, wy * per_y, 3), dtype=np.uint8)
    device = next(nets.parameters()).device
    y_hat, inv_gain = y_hat.to(device), inv_gain.to(device)
    for rows in cores(spans(hy, tile, 0)):
        for cols in cores(spans(wy, tile, 0)):
            r, c = rows.widened(halo, hy), cols.widened(halo, wy)
            y_part = y_hat[..., r.start:r.stop, c.start:c.stop] * inv_gain[:, :, None, None]
            l_t = nets.g_s(y_part.contiguous(memory_format=torch.channels_last))
            x_aux = nets.aux_decoder(l_t[:, : nets.latent_primary])
            top, left = (rows.start - r.start) * per_y, (cols.start - c.start) * per_y
            piece = x_aux[0, :, top:top + rows.size * per_y, left:left + cols.size * per_y]
            out[_pixels(rows, per_y), _pixels(cols, per_y)] = to_uint8(piece)
    return np.ascontiguousarray(out[:height, :width])


def _pixels(span: Span, per_y: int) -> slice:
    return slice(span.start * per_y, span.stop * per_y)
