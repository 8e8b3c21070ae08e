"""Fitting one image into a budget: :func:`fit` (frames) and :func:`fit_bytes` (bytes), and what they return."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.codec.base import Codec, Knobs
from gateway.codec.image_io import as_rgb_array
from gateway.errors import BudgetError, CodecError
from gateway.ratecontrol.budget import Budget
from gateway.ratecontrol.refinement import refine_candidate
from gateway.ratecontrol.search import MAX_SCALES, Candidate, Search


@dataclass
class RateResult:
    """What the rate controller chose, and what it cost."""

    bitstream: bytes
    knobs: Knobs
    codec: str
    budget_frames: int
    parity: int
    budget_bytes: int
    bytes: int
    utilization: float
    scale: float
    downscaled: bool
    candidates: int
    seconds: float
    budget_counting: str
    setting: dict[str, Any] = field(default_factory=dict)
    distortion: float | None = None
    #: Encoder-side refinement of the pick (codecs that refine): its passes; None when none ran.
    refinement: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the bitstream itself is left out; ``bytes`` is its length)."""
        return {
            "codec": self.codec,
            "knobs": {
                "lam_code": self.knobs.lam_code,
                "delta_code": self.knobs.delta_code,
                "scale_code": self.knobs.scale_code,
            },
            "setting": dict(self.setting),
            "budget_frames": self.budget_frames,
            "parity": self.parity,
            "budget_bytes": self.budget_bytes,
            "budget_counting": self.budget_counting,
            "bytes": self.bytes,
            "utilization": round(self.utilization, 4),
            "scale": self.scale,
            "downscaled": self.downscaled,
            "candidates": self.candidates,
            "seconds": round(self.seconds, 4),
            "distortion_mse": None if self.distortion is None else round(self.distortion, 3),
            **({"refinement": self.refinement} if self.refinement is not None else {}),
        }


def _result(search: Search, cand: Candidate, t0: float, **budget: Any) -> RateResult:
    k = cand.knobs
    if len(cand.data) > search.budget:  # the search only keeps measured fits; this guards the contract
        raise CodecError(f"rate control chose {len(cand.data)} B for a {search.budget} B budget; please report this")
    return RateResult(
        bitstream=cand.data,
        knobs=k,
        codec=search.codec.name,
        bytes=len(cand.data),
        utilization=len(cand.data) / budget["budget_bytes"],
        scale=2.0 ** (-k.scale_code / 8.0),
        downscaled=k.scale_code > 0,
        candidates=len(search.encoded),
        seconds=time.perf_counter() - t0,
        setting=search.codec.describe(k),
        distortion=cand.distortion,
        **budget,
    )


def fit_bytes(codec: Codec, image: np.ndarray, budget_bytes: int, *, label: str = "the image") -> RateResult:
    """Best setting of ``codec`` for ``image`` whose whole bitstream is at most ``budget_bytes``.

    Raises :class:`BudgetError` (``frames_needed=None``) when even the
    smallest bitstream is larger; the message gives the bytes it needs.
    """
    t0 = time.perf_counter()
    image = as_rgb_array(image)
    search = Search(codec, image, int(budget_bytes))
    cand = search.run()
    if cand is None:
        raise BudgetError(
            f"{label} needs at least {search.smallest} B with {codec.name}; budget was {budget_bytes} B",
            None,
        )
    cand, refinement = refine_candidate(search, cand)
    result = _result(
        search,
        cand,
        t0,
        budget_frames=0,
        parity=0,
        budget_bytes=int(budget_bytes),
        budget_counting=f"{budget_bytes} B",
    )
    result.refinement = refinement
    return result


class Fitting:
    """One codec, one image, one frame budget, fitted in stages: a cheap :meth:`probe`, then :meth:`finish`.

    The probe is the search at the largest scale that fits only (for codecs
    that decode cheaply; the others' search has one scale, so their probe is
    the whole search).  :meth:`finish` runs the whole search and reuses every
    encode the probe made, so probing first costs almost nothing for a codec
    that is finished anyway, and saves the walk over smaller scales for one
    that is dropped after its probe (:mod:`gateway.ratecontrol.auto`).
    Raises :class:`BudgetError` as :func:`fit` does.
    """

    def __init__(self, codec: Codec, image: np.ndarray, budget: Budget | int, *, label: str = "the image",
                 **shorthand: Any) -> None:
        self.codec = codec
        self.budget = _as_budget(budget, shorthand)
        self.label = label
        self.seconds = 0.0  #: time spent in the stages so far
        self._search = Search(codec, as_rgb_array(image), self.budget.bytes)

    def probe(self) -> RateResult:
        """The best setting at the largest scale that fits (the whole search for codecs without ``fast_decode``)."""
        return self._run(1)

    def finish(self) -> RateResult:
        """The best setting of the whole search (what :func:`fit` returns)."""
        return self._run(MAX_SCALES)

    def _run(self, max_scales: int) -> RateResult:
        t0 = time.perf_counter()
        cand = self._search.run(max_scales)
        if cand is None:
            self.seconds += time.perf_counter() - t0
            raise self._nothing_fits()
        refinement = None
        if max_scales >= MAX_SCALES:  # the whole search only: a probe stays cheap
            cand, refinement = refine_candidate(self._search, cand)
        budget = self.budget
        result = _result(self._search, cand, t0, budget_frames=budget.frames, parity=budget.parity,
                         budget_bytes=budget.bytes, budget_counting=budget.describe())
        result.refinement = refinement
        self.seconds += result.seconds
        result.seconds = self.seconds
        return result

    def _nothing_fits(self) -> BudgetError:
        budget, codec = self.budget, self.codec
        smallest = self._search.smallest or 0
        parity_note = f" ({budget.parity} of them parity)" if budget.parity else ""
        needed = budget.frames_needed(smallest)
        if needed is None:
            msg = (
                f"{self.label} cannot fit any budget of {budget.frame_size} B frames with {codec.name}{parity_note}: "
                f"its smallest bitstream is {smallest} B; use a larger frame size or fewer parity frames"
            )
        else:
            msg = (
                f"{self.label} needs at least {needed} frames of {budget.frame_size} B with {codec.name}"
                f"{parity_note}; budget was {budget.frames}"
            )
        return BudgetError(msg, needed)


def fit(
    codec: Codec,
    image: np.ndarray,
    budget: Budget | int,
    *,
    label: str = "the image",
    **shorthand: Any,
) -> RateResult:
    """Best setting of ``codec`` for ``image`` whose whole bitstream fits ``budget``.

    ``budget`` is a :class:`Budget` (build it with :meth:`Budget.for_frames`
    from the sender's real frame codec). A bare frame count is accepted as
    shorthand for ``Budget(frames, frame_size=450, tag_len=auth_tag_len,
    parity=0)`` with those keywords, for scripts that predate the budget
    object. Raises :class:`BudgetError` with ``frames_needed`` (the smallest
    frame count that fits the smallest bitstream) when nothing fits.
    """
    return Fitting(codec, image, budget, label=label, **shorthand).finish()


def _as_budget(budget: Budget | int, shorthand: dict[str, Any]) -> Budget:
    if isinstance(budget, Budget):
        if shorthand:
            raise TypeError(f"fit() takes {', '.join(sorted(shorthand))} only with a frame count, not with a Budget")
        return budget
    unknown = set(shorthand) - {"frame_size", "parity", "auth_tag_len"}
    if unknown:
        raise TypeError(f"fit() got unexpected keyword arguments {', '.join(sorted(unknown))}")
    return Budget(budget, shorthand.get("frame_size", 450), shorthand.get("auth_tag_len", 0), shorthand.get("parity", 0))
