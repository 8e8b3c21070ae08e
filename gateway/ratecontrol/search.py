"""The rate controller's search: the best setting of one codec for one image within a byte budget.

One controller drives every codec (classical and CADC) through the
:class:`gateway.codec.base.Codec` interface, so all of them are compared at
exactly the same budget.  The search is described, with why it finds a good
point, in ``docs/ratecontrol.md``.  In short:

1. Find the largest image scale at which the codec's smallest setting fits
   (bisection over the scale codes; ``analyze`` runs at most once per scale).
2. At a scale, bisect the λ codes (with the largest Δ) for the best λ that can
   fit, then for each λ from there down bisect Δ for the smallest Δ that fits;
   rank those candidates with the codec's ``estimate_distortion`` if it
   declares ``estimates_distortion``, else take the highest λ.  Stop once the smallest Δ fits (a lower λ can
   only be worse).  Codecs that declare a ``rate_anchor_delta_code`` (CADC)
   instead hold Δ at that code while λ sets the rate, search on the codec's
   ``estimate_bytes`` predictions (``predicts_bytes``) and encode only the pick
   (:meth:`_Search.best_at_scale_anchored`).
3. Codecs that decode cheaply (``fast_decode``, the classical ones) also try
   the next smaller scales and keep the one whose decoded image is closest to
   the original: at a few hundred bytes, a smaller image at a higher quality
   often beats a larger one at quality 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gateway.codec import bitstream
from gateway.codec.base import Codec, Knobs
from gateway.codec.image_io import box_downscale, resize_rgb
from gateway.errors import CodecError, ConfigError

#: Smaller scales tried after the largest one that fits (fast-decode codecs only).
MAX_SCALES = 4
#: Lower λ steps tried per scale, after the highest λ that fits, when the codec can estimate distortion.
MAX_LAM_STEPS = 6
#: Distortion is measured on at most this many pixels (both images box-downscaled).
_MEASURE_PIXELS = 1_000_000
#: Anchored (CADC) search: at most this many real encodes to use bytes a cautious estimate left over.
MAX_FILL_STEPS = 3
#: Anchored search: the λ search may stop at a λ this close under budget (a fraction of it); the Δ
#: search after it fills the rest, so the last few λ probes near the boundary are saved.
LAM_SLACK = 0.03
#: Anchored search: a predicted size this far under budget is trusted to fit without a real encode
#: (CADC's predictions are within ~4 bytes); the final pick is always encoded and measured.
_PREDICTION_MARGIN = 16


@dataclass
class Candidate:
    knobs: Knobs
    data: bytes
    distortion: float | None = None


def boundary(
    size_at: Callable[[int], int],
    budget: int,
    lo: int,
    hi: int,
    *,
    guess: int | None = None,
    per_doubling: float | None = None,
    slack: float = 0.0,
) -> int:
    """Smallest i in [lo, hi] with ``size_at(i) <= budget``, where sizes fall as i grows and hi fits.

    With ``per_doubling`` (about how many indices double the size) this is
    regula falsi on log(bytes) with the Illinois fix: bytes are close to
    exponential in a quality index, so the secant through the bracket lands
    within an index or two of the boundary in a handful of probes.  Before an
    upper bracket end is known it extrapolates from the fitting end: along
    the secant through the last two fitting probes where there are two, else
    by the prior slope (doubling the step each time it falls short), so the
    first probe is near the answer instead of at mid-range, where a probe is
    most expensive.  A bisection step whenever the bracket fails to halve
    twice keeps the worst case logarithmic.  Without ``per_doubling`` it is
    plain bisection.

    ``slack`` (a fraction of the budget): stop as soon as a fitting probe is
    within it of the budget, which may be above the smallest fitting index
    (for a caller that fills the rest with a finer knob).
    """
    log_budget = math.log(budget)
    f_hi = f_fit = math.log(size_at(hi)) - log_budget  # <= 0: hi fits (f_hi: the Illinois-weighted copy)
    f_close = math.log1p(-slack) if slack > 0 else math.inf
    f_over: float | None = None  # log-excess at lo - 1 once a probe has failed
    fit_before: tuple[int, float] | None = None  # the fitting end before the last one moved it
    secants = 0  # extrapolations along the secant so far: after a few, the doubling steps take over
    last_side = 0
    reach = 1.0
    missed = 0
    while lo < hi and f_fit < f_close:
        width = hi - lo
        if guess is not None and lo <= guess < hi:
            probe, guess = guess, None
        elif per_doubling is None or missed >= 2:
            probe = (lo + hi) // 2
        elif f_over is None:
            rise = 0.0
            if fit_before is not None and fit_before[0] > hi:
                rise = (f_fit - fit_before[1]) / (fit_before[0] - hi)  # log-bytes gained per index step down
            if rise > 0 and secants < 3:
                probe = hi - max(1, math.ceil(-f_fit / rise))  # lean past the boundary: that closes the bracket
                secants += 1
            else:
                probe = hi - max(1, math.ceil(reach * per_doubling * -f_fit / math.log(2)))
                reach *= 2
        else:
            t = (lo - 1) + (hi - lo + 1) * f_over / (f_over - f_hi)
            probe = math.ceil(t)  # lean to the fitting side: the boundary is the first index that fits
        probe = min(hi - 1, max(lo, probe))
        f = math.log(size_at(probe)) - log_budget
        if f <= 0:
            fit_before = (hi, f_fit)
            hi, f_hi, f_fit = probe, f, f
            if last_side > 0 and f_over is not None:
                f_over /= 2
            last_side = 1
        else:
            lo, f_over = probe + 1, f
            if last_side < 0:
                f_hi /= 2
            last_side = -1
        # Only a closed bracket can fail to halve: extrapolating steps from the fitting end are not counted.
        missed = 0 if (hi - lo) * 2 <= width or f_over is None else missed + 1
    return hi  # == lo unless the slack stopped it early


def oversize_scales(codec: Codec, size: tuple[int, int], scale_codes: list[int]) -> list[int]:
    """The scale codes to search for a picture of ``size`` = (width, height), after the codec's size limit.

    A picture within ``codec.max_pixels`` keeps every code.  A larger one is
    coded downscaled from the largest size within the limit on (the exact
    scale code for it, then the usual steps below it) when ``codec.oversize``
    is ``"downscale"``, and refused with a :class:`CodecError` when it is
    ``"refuse"``.  Either way no codec is ever handed a picture above its limit.
    """
    w, h = size
    limit = codec.max_pixels
    if limit is None or w * h <= limit:
        return scale_codes
    if codec.oversize != "downscale":
        raise CodecError(
            f"image {w}x{h} ({w * h:,} pixels) is above the {limit:,}-pixel limit of {codec.name} and its oversize "
            "policy is 'refuse'; downscale it before sending, or set codec.oversize: downscale in the model config"
        )
    first = bitstream.scale_code_within(w, h, limit)
    return [first] + [s for s in scale_codes if s > first]


class Search:
    """One rate-control search of one image at one byte budget."""

    def __init__(self, codec: Codec, image: np.ndarray, budget: int) -> None:
        self.codec = codec
        self.image = image
        self.budget = budget
        self.size = (image.shape[1], image.shape[0])
        space = codec.search_space()
        self.lams = list(space.lam_codes)
        self.deltas = list(space.delta_codes) or [0]
        if not self.lams:
            raise ConfigError(f"codec {codec.name} offers no λ/quality codes to search")
        # Scale codes that give the same coded size (tiny images) would repeat work.
        self.scales: list[int] = []
        seen: set[tuple[int, int]] = set()
        for s in oversize_scales(codec, self.size, list(space.scale_codes) or [0]):
            coded = bitstream.scaled_size(*self.size, s)
            if coded not in seen:
                seen.add(coded)
                self.scales.append(s)
        self.analyses: dict[int, Any] = {}
        self.encoded: dict[Knobs, bytes] = {}
        self.estimated: dict[Knobs, float] = {}
        # Codecs with a preferred Δ (CADC: the Δ it was mostly trained at) get the anchored search;
        # those that can predict their size without coding (CADC) search on predictions.
        self.anchor = codec.rate_anchor_delta_code
        self.predicts_bytes = codec.predicts_bytes
        self.smallest: int | None = None
        self.estimates_distortion = codec.estimates_distortion
        self.fast_decode = codec.fast_decode
        self._reference: np.ndarray | None = None
        self.last_lam_index: int | None = None
        # Prior for the secant search: across a codec's range bytes grow by roughly 2**7.
        self.lam_per_doubling = max(1.0, len(self.lams) / 7)
        # Near a Δ anchor a Δ code moves the size far less than a λ code (CADC: ~0.7 % against ~1.5-2 %,
        # about 100 codes a doubling); only the first step of a Δ search uses this prior.
        self.delta_per_doubling = max(1.0, len(self.deltas) / 2.5)

    # --- primitives -------------------------------------------------------
    def analysis(self, scale_code: int) -> Any:
        if scale_code not in self.analyses:
            coded = bitstream.scaled_size(*self.size, scale_code)
            self.analyses[scale_code] = self.codec.analyze(resize_rgb(self.image, coded, reducing_gap=3.0))
        return self.analyses[scale_code]

    def encode(self, knobs: Knobs) -> bytes:
        if knobs not in self.encoded:
            data = self.codec.encode(self.analysis(knobs.scale_code), knobs, self.size)
            self.encoded[knobs] = data
            if self.smallest is None or len(data) < self.smallest:
                self.smallest = len(data)
        return self.encoded[knobs]

    def nbytes(self, knobs: Knobs) -> int:
        return len(self.encode(knobs))

    def predicted_bytes(self, knobs: Knobs, *, measured: bool = True) -> float:
        """The codec's size prediction for ``knobs``: the real size where one is known (``measured``)
        or the codec cannot predict."""
        if (measured and knobs in self.encoded) or not self.predicts_bytes:
            return float(self.nbytes(knobs))
        if knobs not in self.estimated:
            self.estimated[knobs] = float(self.codec.estimate_bytes(self.analysis(knobs.scale_code), knobs))
        return self.estimated[knobs]

    def measured_distortion(self, data: bytes) -> float:
        """MSE of the decoded image against the original (on at most ~1 MP of both)."""
        w, h = self.size
        f = min(1.0, math.sqrt(_MEASURE_PIXELS / (w * h)))
        ref_size = (max(1, round(w * f)), max(1, round(h * f)))
        if self._reference is None:
            self._reference = box_downscale(self.image, ref_size).astype(np.float32)
        decoded = box_downscale(self.codec.decode(data), ref_size).astype(np.float32)
        return float(np.mean((decoded - self._reference) ** 2))

    # --- the search -------------------------------------------------------
    def anchor_index(self) -> int:
        """Index in ``self.deltas`` of the Δ code nearest the codec's ``rate_anchor_delta_code``."""
        return min(range(len(self.deltas)), key=lambda j: abs(self.deltas[j] - self.anchor))  # type: ignore[operator]

    def best_at_scale_anchored(self, s: int) -> Candidate | None:
        """Anchored search (codecs with ``rate_anchor_delta_code``, i.e. CADC) at scale ``s``.

        Δ stays at the anchor (the bin width the model was trained at most)
        while λ carries the rate: the highest λ whose bitstream fits at the
        anchor Δ (or one that fits within :data:`LAM_SLACK` of the budget, if
        the λ search meets one first), then the smallest Δ that fits at that λ
        fills what the λ step left over.  Only when even the highest λ fits at the anchor does Δ go
        below it (more bits than λ alone can spend), and only when even the
        lowest λ does not fit does Δ go above it.  Boundaries are found on the
        codec's size predictions (``estimate_bytes``; the real sizes without
        one), then the pick is encoded for real: while it is over budget Δ
        steps up; while the next smaller Δ fits it steps down (at most
        :data:`MAX_FILL_STEPS` encodes, and only where the prediction says
        the extra bytes fit).  Returns None only when the smallest setting at
        ``s`` turns out not to fit (it may have been trusted on a prediction).
        """
        lams, deltas, budget = self.lams, self.deltas, self.budget
        last_i, last_j = len(lams) - 1, len(deltas) - 1
        j1 = self.anchor_index()
        size = lambda i, j: self.predicted_bytes(Knobs(lams[i], deltas[j], s))  # noqa: E731
        lam_prior = self.lam_per_doubling
        delta_prior = self.delta_per_doubling

        def smallest_delta(i: int, lo: int, hi: int) -> int:
            return boundary(lambda j: size(i, j), budget, lo, hi, per_doubling=delta_prior)

        # The lowest λ is probed first: its state is already cached by the smallest-setting check.  The
        # highest λ is never probed on its own: the λ search extrapolates from the lowest λ, and only a
        # budget that even the highest λ fits ends its search at index 0.
        if size(last_i, j1) > budget:
            i, j = last_i, smallest_delta(last_i, j1, last_j)
        else:
            i = boundary(lambda i: size(i, j1), budget, 0, last_i, per_doubling=lam_prior, slack=LAM_SLACK)
            j = smallest_delta(i, 0, j1)
        knobs = lambda: Knobs(lams[i], deltas[j], s)  # noqa: E731
        while self.nbytes(knobs()) > budget:
            if j < last_j:
                j += 1
            elif i < last_i:
                i += 1
            else:
                return None  # the smallest setting was only predicted to fit, and does not
        for _ in range(MAX_FILL_STEPS):
            # Spend an encode on the next smaller Δ only where the prediction says its extra bytes fit.
            pred = lambda jj: self.predicted_bytes(Knobs(lams[i], deltas[jj], s), measured=False)  # noqa: E731
            if j == 0 or self.nbytes(knobs()) + pred(j - 1) - pred(j) > budget:
                break
            if self.nbytes(Knobs(lams[i], deltas[j - 1], s)) > budget:
                break
            j -= 1
        self.last_lam_index = i
        return Candidate(knobs(), self.encode(knobs()))

    def best_at_scale(self, s: int, guess: int | None = None) -> Candidate:
        """Best fitting (λ, Δ) at scale ``s``; the smallest setting there is known to fit."""
        lams, deltas = self.lams, self.deltas
        if self.anchor is not None and len(deltas) > 1:
            cand = self.best_at_scale_anchored(s)
            if cand is not None:
                return cand
        i0 = boundary(
            lambda i: self.nbytes(Knobs(lams[i], deltas[-1], s)),
            self.budget,
            0,
            len(lams) - 1,
            guess=guess,
            per_doubling=self.lam_per_doubling,
        )
        self.last_lam_index = i0
        if len(deltas) == 1:
            k = Knobs(lams[i0], deltas[0], s)
            return Candidate(k, self.encode(k))

        def smallest_delta(i: int, j_hi: int) -> int:
            # Bytes fall as λ falls, so the smallest fitting Δ can only shrink: search at or below j_hi.
            return boundary(
                lambda j: self.nbytes(Knobs(lams[i], deltas[j], s)),
                self.budget,
                0,
                j_hi,
                per_doubling=max(1.0, len(deltas) / 7),
            )

        j_hi = smallest_delta(i0, len(deltas) - 1)
        cands = [Knobs(lams[i0], deltas[j_hi], s)]
        if self.estimates_distortion:
            # A lower λ is only worth having with a smaller Δ (at the same Δ it is worse on both
            # knobs), so each step costs one encode unless it opens a new candidate.
            for i in range(i0 + 1, min(len(lams), i0 + 1 + MAX_LAM_STEPS)):
                if j_hi == 0:
                    break  # the smallest Δ fits: every lower λ is worse
                if self.nbytes(Knobs(lams[i], deltas[j_hi - 1], s)) > self.budget:
                    continue
                j_hi = smallest_delta(i, j_hi - 1)
                cands.append(Knobs(lams[i], deltas[j_hi], s))
        if len(cands) == 1:
            return Candidate(cands[0], self.encode(cands[0]))
        scored = [(float(self.codec.estimate_distortion(self.analysis(s), k)), k) for k in cands]
        if not all(math.isfinite(d) for d, _ in scored):
            return Candidate(cands[0], self.encode(cands[0]))  # no usable estimate: highest λ wins
        # The estimate only ranks (λ, Δ) here; RateResult.distortion stays a measured pixel MSE.
        _, k = min(scored, key=lambda t: t[0])
        return Candidate(k, self.encode(k))

    def run(self, max_scales: int = MAX_SCALES) -> Candidate | None:
        """The best fitting candidate (None: nothing fits); fast-decode codecs try up to ``max_scales`` scales.

        ``max_scales=1`` is a cheap probe (the largest scale that fits only);
        running again with more reuses every encode the probe made.
        """
        scales = self.scales
        smallest_setting = lambda idx: Knobs(self.lams[-1], self.deltas[-1], scales[idx])  # noqa: E731
        if not self.fast_decode:
            # Codecs without fast_decode (CADC) use the largest scale that fits, and their smallest
            # setting usually fits at full size: one analyze, no probe at the smallest scale.
            if self.anchor is not None and self.predicts_bytes:
                # The anchored search's first probe (lowest λ at the anchor Δ) fitting means the smallest
                # setting fits too (bytes fall as Δ grows): one prediction instead of two.
                anchor_probe = Knobs(self.lams[-1], self.deltas[self.anchor_index()], scales[0])
                fits = lambda k: self.predicted_bytes(k) <= self.budget - _PREDICTION_MARGIN  # noqa: E731
                if fits(anchor_probe) or fits(smallest_setting(0)):
                    cand = self.best_at_scale_anchored(scales[0])
                    if cand is not None:
                        return cand
            elif self.nbytes(smallest_setting(0)) <= self.budget:
                return self.best_at_scale(scales[0])
        if self.nbytes(smallest_setting(len(scales) - 1)) > self.budget:
            return None
        # Codecs without fast_decode (CADC) pay mostly for analyze, and their smallest setting
        # usually fits at full size: probe that first rather than analyze at several scales.
        first = boundary(
            lambda idx: self.nbytes(smallest_setting(idx)),
            self.budget,
            0,
            len(scales) - 1,
            guess=None if self.fast_decode else 0,
        )
        if not self.fast_decode:
            return self.best_at_scale(scales[first])
        top = (self.lams[0], self.deltas[0])
        best: Candidate | None = None
        for idx in range(first, min(len(scales), first + max(1, max_scales))):
            # A smaller image affords a higher quality than the larger one got (about one size
            # doubling for a halved area): try that first.
            if self.nbytes(smallest_setting(idx)) > self.budget:
                break  # bisection assumed smaller images are smaller; a real encoder may disagree
            guess = None
            if best is not None and self.last_lam_index is not None:
                guess = max(0, self.last_lam_index - round(self.lam_per_doubling))
            cand = self.best_at_scale(scales[idx], guess=guess)
            cand.distortion = self.measured_distortion(cand.data)
            if best is None or cand.distortion < best.distortion:  # type: ignore[operator]
                best = cand
            elif cand.distortion > best.distortion:  # type: ignore[operator]
                break  # distortion against scale is unimodal in practice: past the minimum
            if (cand.knobs.lam_code, cand.knobs.delta_code) == top:
                break  # the best setting fits; smaller images only lose detail
        return best
