"""The codec interface every backend implements (classical and CADC).

A codec splits encoding in two so the rate controller can search cheaply:

* :meth:`Codec.analyze` does the expensive per-image work once (for CADC the
  analysis transform ``g_a``; for classical codecs just the pixel array);
* :meth:`Codec.encode` turns that analysis plus one :class:`Knobs` setting into
  a complete bitstream (header included, see :mod:`gateway.codec.bitstream`).

Knobs are the integer codes that travel in the header, so what the search
chose is exactly what the decoder is told.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np


@dataclass(frozen=True)
class Knobs:
    """One point in a codec's rate–quality space (header codes, one byte each).

    ``lam_code``: CADC's λ index or a classical codec's quality 0..100; in
    both a higher code means more bits and better quality (for CADC a higher
    code is a *smaller* λ in the training loss L = λ·R + D).  ``delta_code``: CADC's Δ index (higher =
    wider bins = fewer bits); classical codecs ignore it.  ``scale_code``:
    downscaling, coded size = original * 2**(-scale_code/8).
    """

    lam_code: int
    delta_code: int = 0
    scale_code: int = 0


@dataclass(frozen=True)
class SearchSpace:
    """What the rate controller may try for a codec.

    ``lam_codes`` run from best quality to smallest output; ``delta_codes``
    run from fewest to most bytes saved (ascending Δ), or ``(0,)`` when the
    codec has no Δ knob.  ``scale_codes`` are the downscale fallbacks, from
    full size downwards.
    """

    lam_codes: Sequence[int]
    delta_codes: Sequence[int] = (0,)
    scale_codes: Sequence[int] = field(default_factory=lambda: tuple(range(0, 65, 4)))


@dataclass(frozen=True)
class QualityEstimate:
    """How good a codec's picture of one image is expected to be, without the decoder that would show it.

    ``values``: metric name (``ms_ssim``, ``psnr``) -> value; ``errors``:
    metric -> the typical absolute error of that value (a calibration's
    held-out MAE), absent where unknown; ``source`` says where the values
    come from (``calibration``: a fitted predictor; ``aux``: the auxiliary
    reconstruction's own quality, the fallback without a calibration);
    ``note`` is a sentence for logs (e.g. why the fallback was used).
    """

    values: dict[str, float]
    errors: dict[str, float] = field(default_factory=dict)
    source: str = "calibration"
    note: str | None = None


class Codec(ABC):
    """An image codec usable by the rate controller and the daemons.

    Besides the four abstract methods a codec *declares* what else it can do;
    the defaults here are the plain case, and callers read the declarations
    instead of probing for methods:

    * :attr:`fast_decode`: decoding costs milliseconds, so the rate
      controller may decode candidates to compare their real distortion;
    * :attr:`rate_anchor_delta_code`: a Δ code to hold while λ sets the rate
      (None: no preferred Δ);
    * :attr:`predicts_bytes`: :meth:`estimate_bytes` predicts a bitstream's
      length without coding it;
    * :attr:`estimates_distortion`: :meth:`estimate_distortion` ranks settings
      without decoding;
    * :attr:`predicts_quality`: :meth:`predict_quality` tells how good the
      decoded picture will be without decoding it (CADC, whose decoder is the
      ground's diffusion model);
    * :attr:`progressive`: any prefix of a bitstream that holds its first
      layer decodes to a (coarser) picture: ``decode_with_info(..., partial=True)``,
      and :meth:`prefix_layers` says how many layers a prefix holds;
    * :meth:`decode_with_info`: every codec has it; the default adds no info;
    * :meth:`refine_symbols` (when :meth:`refines` says yes for a picture):
      spends encoder time on better symbols for a chosen setting (CADC with
      its decoder loaded and ``refine_settings.iterations`` > 0);
    * :attr:`max_pixels`: the largest picture it codes (None: no limit), and
      :attr:`oversize`, what the rate controller does with a larger one:
      ``"downscale"`` (code it at the largest scale within the limit) or
      ``"refuse"`` (a :class:`~gateway.errors.CodecError`).
    """

    name: ClassVar[str]
    codec_id: ClassVar[int]
    fast_decode: ClassVar[bool] = False
    predicts_bytes: ClassVar[bool] = False
    estimates_distortion: ClassVar[bool] = False
    predicts_quality: bool = False
    progressive: ClassVar[bool] = False
    rate_anchor_delta_code: int | None = None
    max_pixels: int | None = None
    oversize: str = "downscale"

    @property
    def model_id(self) -> int:
        """16-bit id of the model behind the codec (0 when there is none)."""
        return 0

    @abstractmethod
    def search_space(self) -> SearchSpace:
        """The knob values the rate controller searches."""

    @abstractmethod
    def analyze(self, image: np.ndarray) -> Any:
        """Expensive once-per-image work on an HxWx3 uint8 RGB array."""

    @abstractmethod
    def encode(self, analysis: Any, knobs: Knobs, original_size: tuple[int, int]) -> bytes:
        """A complete bitstream for ``analysis`` at ``knobs``.

        ``original_size`` is the (width, height) before any downscale, written
        to the header so the decoder restores it.
        """

    @abstractmethod
    def decode(self, bitstream: bytes) -> np.ndarray:
        """Decode a complete bitstream to an HxWx3 uint8 RGB array at the original size.

        Raises :class:`gateway.errors.BitstreamError` (or a subclass) for any
        malformed input.
        """

    def describe(self, knobs: Knobs) -> dict[str, Any]:
        """Human-facing values of ``knobs`` (e.g. λ and Δ as floats) for logs and JSON."""
        return {"lam_code": knobs.lam_code, "delta_code": knobs.delta_code, "scale_code": knobs.scale_code}

    def decode_with_info(self, bitstream: bytes, partial: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """:meth:`decode` plus what the codec can tell about it (e.g. caption, stage timings); here nothing.

        ``partial`` asks for a picture from a prefix of the bitstream; a codec
        that is not :attr:`progressive` decodes only complete streams (a cut one
        raises :class:`gateway.errors.BitstreamError`).
        """
        return self.decode(bitstream), {}

    def prefix_layers(self, bitstream: bytes) -> tuple[int, int]:
        """(layers a prefix of a bitstream holds completely, layers of the whole stream), read from its framing.

        Cheap: nothing is decoded. 0 layers means the prefix does not yet hold
        a picture. Only codecs that declare :attr:`progressive` implement it.
        """
        raise NotImplementedError(f"codec {self.name} does not decode prefixes (progressive is False)")

    def estimate_bytes(self, analysis: Any, knobs: Knobs) -> float:
        """The bitstream length ``encode(analysis, knobs, ...)`` would give, predicted without coding.

        Only codecs that declare :attr:`predicts_bytes` implement it.
        """
        raise NotImplementedError(f"codec {self.name} does not predict its size (predicts_bytes is False)")

    def estimate_distortion(self, analysis: Any, knobs: Knobs) -> float:
        """A cheap distortion proxy that ranks settings of one image (NaN: no usable estimate).

        Only codecs that declare :attr:`estimates_distortion` implement it.
        """
        return float("nan")

    def refines(self, analysis: Any) -> bool:
        """Whether :meth:`refine_symbols` would work on ``analysis`` (the default codec: never)."""
        return False

    def refine_symbols(self, analysis: Any, knobs: Knobs) -> tuple[Any, dict[str, Any]]:
        """An analysis that encodes better symbols at ``knobs`` (every other setting as before), and a report.

        The report has ``distortion_after`` (lower is better, comparable across
        settings of one picture) and ``improved``.  Only codecs whose
        :meth:`refines` is true implement it.
        """
        raise NotImplementedError(f"codec {self.name} does not refine its symbols")

    def symbol_distortion(self, analysis: Any, knobs: Knobs) -> float:
        """The distortion :meth:`refine_symbols` reports, of ``analysis``'s symbols at ``knobs`` as they are.

        Lets the rate controller compare a setting it did not refine with
        those it did.  Only codecs whose :meth:`refines` is true implement it.
        """
        raise NotImplementedError(f"codec {self.name} does not refine its symbols")

    def predict_quality(self, image: np.ndarray, bitstream: bytes) -> QualityEstimate:
        """The expected quality of ``bitstream``'s decoded picture against ``image`` (the original), not decoded.

        Only codecs that declare :attr:`predicts_quality` implement it.
        """
        raise NotImplementedError(f"codec {self.name} does not predict its quality (predicts_quality is False)")
