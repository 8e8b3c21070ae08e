"""How good the ground's CADC picture of a bitstream will be, predicted on the sender.

The ground decodes with a UNet and a VAE that a sender never loads, so a
sender cannot measure CADC's picture as it measures a classical codec's.
It can afford ADGIC's auxiliary reconstruction x̂_aux (``g_s`` and the
auxiliary decoder, :mod:`gateway.codec.cadc.aux_preview`) from the very
symbols it sends; its quality against the original, with what was spent and
how hard the picture is (:mod:`gateway.codec.cadc.quality_features`), goes
through the bundle's calibration (:mod:`gateway.codec.cadc.quality_calibration`)
to the ground's expected MS-SSIM and PSNR.

Without a usable calibration (none in the bundle, unreadable, or fitted for
other weights) the rule is explicit: **x̂_aux's own MS-SSIM and PSNR stand
for the ground's** (``source: "aux"``, no error bound), and the estimate's
note says why, for the log.  x̂_aux is the blurrier of the two pictures on
the models measured so far, so the fallback leans towards the classical
codecs rather than away from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gateway.codec.base import QualityEstimate
from gateway.codec.cadc.aux_preview import AuxPreviewNets, aux_picture, load_aux_preview
from gateway.codec.cadc.color_layer import apply_color_layer
from gateway.codec.cadc.quality_calibration import QualityCalibration, load_calibration
from gateway.codec.cadc.quality_features import aux_features, coding_features, image_statistics
from gateway.codec.image_io import as_rgb_array, box_downscale, resize_rgb
from gateway.codec.image_metrics import measure_size, quality
from gateway.errors import CodecError

if TYPE_CHECKING:
    from gateway.codec.cadc.codec import CADCCodec

#: The fallback rule, in the words the log and the docs use.
FALLBACK_RULE = "the auxiliary reconstruction's own MS-SSIM and PSNR stand for the ground's"


class QualityPredictor:
    """The sender's predictor of one CADC codec's ground quality (see the module docstring)."""

    def __init__(self, codec: "CADCCodec", nets: AuxPreviewNets, calibration: QualityCalibration | None,
                 note: str | None = None) -> None:
        self.codec = codec
        self.nets = nets
        self.calibration = calibration
        #: Why there is no calibration (None when there is one).
        self.note = note

    @classmethod
    def for_codec(cls, codec: "CADCCodec", bundle: str | Path | None) -> "QualityPredictor":
        """The predictor of ``codec``: its own g_s and auxiliary decoder when it has the whole model, else the
        bundle's (read from ``codec.safetensors``), and the bundle's calibration when it fits the weights."""
        if codec.decodes:
            nets = AuxPreviewNets.of_model(codec.model)
        elif bundle is None:
            raise CodecError("an encoder-only CADC codec needs its bundle folder to predict its quality")
        else:
            nets = load_aux_preview(bundle, codec.model.config, codec.device)
        calibration, note = load_calibration(bundle, codec.model_id)
        return cls(codec, nets, calibration, note)

    @torch.no_grad()
    def features(self, image: np.ndarray, bitstream: bytes) -> dict[str, float]:
        """Every feature of :data:`~gateway.codec.cadc.quality_features.FEATURES` for ``bitstream`` of ``image``.

        The bitstream is entropy-decoded (and so verified) here: the features
        describe exactly the symbols that go on the link.
        """
        codec = self.codec
        image = as_rgb_array(image)
        header, sym = codec.decode_symbols(bitstream)
        if (header.width, header.height) != (image.shape[1], image.shape[0]):
            raise CodecError(f"bitstream codes a {header.width}x{header.height} picture, not this "
                             f"{image.shape[1]}x{image.shape[0]} one")
        lam, delta = codec.lam(header.lam_code), codec.delta(header.delta_code)
        _, inv_gain = codec.model.gains(torch.tensor([lam], device=codec.device))
        y_hat = torch.from_numpy(sym.q).float().unsqueeze(0) * delta
        aux = aux_picture(self.nets, y_hat, inv_gain.float(), header.coded_size)
        if sym.color is not None:  # the ground lays the colour layer on its picture; x̂_aux gets it too
            aux = apply_color_layer(aux, sym.color)
        size = measure_size(header.width, header.height)
        reference = box_downscale(image, size)
        # x̂_aux at the measuring size: reduced like the original when it is larger, else enlarged as the
        # ground enlarges a downscaled picture.
        if aux.shape[1] >= size[0] and aux.shape[0] >= size[1]:
            aux = box_downscale(aux, size)
        else:
            aux = resize_rgb(aux, size)
        scale = 2.0 ** (-header.scale_code / 8.0)
        return {
            **aux_features(quality(reference, aux)),
            **coding_features(len(bitstream), header.width * header.height, lam, delta, scale),
            **image_statistics(reference),
        }

    def predict(self, image: np.ndarray, bitstream: bytes) -> QualityEstimate:
        """The ground's expected MS-SSIM and PSNR of ``bitstream`` (see the module docstring for the fallback)."""
        feats = self.features(image, bitstream)
        if self.calibration is None:
            return QualityEstimate({"ms_ssim": feats["aux_ms_ssim"], "psnr": feats["aux_psnr"]}, {}, "aux",
                                   f"no quality calibration ({self.note}): {FALLBACK_RULE}")
        values = self.calibration.predict(feats)
        errors = {t: e for t in values if (e := self.calibration.error(t)) is not None}
        return QualityEstimate(values, errors, "calibration")
