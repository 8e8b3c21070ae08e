"""``codec: auto``: of several codecs, the one whose picture is expected to be best at this image's budget.

Every candidate goes through the same rate controller at the same
:class:`~gateway.ratecontrol.budget.Budget`; the pick is the candidate with
the best expected quality on one metric (``ms_ssim`` by default, or
``psnr``):

* a codec that decodes cheaply (``fast_decode``: the classical ones) is
  *measured*: its bitstream is decoded here and compared with the original
  (:func:`gateway.codec.image_metrics.quality`);
* a codec that ``predicts_quality`` (CADC, whose decoder is the ground's
  diffusion model) is *predicted* from what the sender can afford (its
  auxiliary reconstruction and the bundle's calibration);
* any other codec's quality is unknown: it is picked only when no candidate
  with a known quality fits.

The cost is bounded by probing first.  Candidates are taken in the order
listed; each one's cheap probe (:meth:`~gateway.ratecontrol.fit.Fitting.probe`,
the largest scale that fits) is measured or predicted, and a classical
candidate whose probe, plus ``drop_margin``, is still below the *floor* --
the best value an earlier candidate is sure to reach (a measured value, or a
prediction less twice its held-out error) -- is dropped without the rest of
its search.  The others finish their search and each keeps the better of its
probe and its final bitstream (both measured), so a finished candidate is
never worse than its probe; its value then raises the floor.  So the default
order puts cheap, strong codecs first (:data:`AUTO_ORDER`): the slow ones
(AVIF, JPEG XL) meet a high floor.  ``docs/ratecontrol.md`` has the rule and
the measurements behind the margins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from gateway.codec.base import Codec
from gateway.codec.image_io import as_rgb_array
from gateway.errors import BudgetError, CodecError, ConfigError, SatgwError
from gateway.ratecontrol.budget import Budget
from gateway.ratecontrol.fit import Fitting, RateResult

#: What a job or config may ask for instead of one codec.
AUTO = "auto"
#: Metrics the choice may rank by.
METRICS = ("ms_ssim", "psnr")
#: Default ``drop_margin`` per metric: how far below the floor a probe may be and still be finished.
#: The smaller scales added up to 0.14 MS-SSIM (median 0.02) and 7 dB (median 0.5) to a classical probe on
#: training pictures, but with the floor set by earlier candidates' finished values these margins dropped
#: no eventual winner there (0.03 MS-SSIM / 0.75 dB did); docs/ratecontrol.md.
DROP_MARGINS = {"ms_ssim": 0.05, "psnr": 1.5}
#: The default candidates' order: CADC (one scale: its probe is its search), then the cheap, strong WebP,
#: then the slow AVIF and JPEG XL, which are dropped after their probe when clearly behind, then JPEG.
AUTO_ORDER = ("cadc", "webp", "avif", "jxl", "jpeg")
#: A prediction counts as sure to reach its value less this many held-out errors.
PREDICTION_SLACK = 2.0


@dataclass(frozen=True)
class AutoSettings:
    """How ``auto`` chooses: the candidates (codec names, in order), the metric, the drop margin (None: default)."""

    candidates: tuple[str, ...]
    metric: str = "ms_ssim"
    drop_margin: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"auto metric {self.metric!r} is unknown; use one of {', '.join(METRICS)}")
        if self.drop_margin is not None and not self.drop_margin >= 0:
            raise ConfigError(f"auto drop_margin must be >= 0 (or null for the default), got {self.drop_margin!r}")

    @property
    def margin(self) -> float:
        """The drop margin in the metric's units."""
        return DROP_MARGINS[self.metric] if self.drop_margin is None else float(self.drop_margin)


def check_candidates(names: Sequence[Any], known: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a candidate list, or :class:`ConfigError` saying what is wrong (unknown, repeated, empty)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"auto candidates must be a list of codec names, e.g. [cadc, avif, webp]; got {names!r}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name.lower() not in known:
            what = "auto itself cannot be a candidate" if name == AUTO else f"unknown codec {name!r}"
            raise ConfigError(f"auto candidates: {what}; valid codecs: {', '.join(known)}")
        if name.lower() in out:
            raise ConfigError(f"auto candidates: {name!r} is listed twice")
        out.append(name.lower())
    if not out:
        raise ConfigError("auto candidates: the list is empty; name at least one codec, e.g. [cadc, avif, webp]")
    return tuple(out)


def default_candidates() -> tuple[str, ...]:
    """cadc (when its module is installed) and every classical backend, in :data:`AUTO_ORDER`: the candidates
    when none are configured."""
    from gateway.codec.registry import available_codecs

    here = available_codecs()
    return tuple([n for n in AUTO_ORDER if n in here] + [n for n in here if n not in AUTO_ORDER])


def load_candidates(names: Sequence[str], make: Callable[[str], Codec]) -> tuple[list[Codec], dict[str, str]]:
    """The codecs ``make(name)`` builds for ``names``, and for each that did not load, why not.

    A candidate that cannot be loaded here (e.g. a CADC bundle that is
    missing or damaged) is left out rather than failing the choice; the
    caller logs the reasons.
    """
    codecs, missing = [], {}
    for name in names:
        try:
            codecs.append(make(name))
        except (SatgwError, ImportError, OSError, RuntimeError) as e:
            missing[name] = f"{type(e).__name__}: {e}"
    return codecs, missing


@dataclass
class CandidateReport:
    """What became of one candidate: its fit, its quality, and why it won or lost.

    ``state``: ``chosen``; ``finished`` (searched fully, lost); ``dropped``
    (dominated after its probe); ``unfit`` (nothing fits the budget);
    ``failed`` (an error, in ``reason``).  ``quality`` holds the metric values
    of the kept bitstream, ``kind`` says whether they were ``measured`` or
    ``predicted`` (``source`` and ``errors``: the prediction's origin and
    held-out errors).
    """

    codec: str
    state: str = "failed"
    kind: str | None = None
    quality: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    note: str | None = None
    bytes: int | None = None
    setting: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str | None = None
    result: RateResult | None = field(default=None, repr=False)

    def value(self, metric: str) -> float | None:
        """The expected value on ``metric`` (None: unknown)."""
        return self.quality.get(metric)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly record (the bitstream is left out)."""
        out: dict[str, Any] = {"codec": self.codec, "state": self.state, "kind": self.kind,
                               "quality": {k: round(v, 5) for k, v in self.quality.items()},
                               "bytes": self.bytes, "seconds": round(self.seconds, 4)}
        if self.errors:
            out["errors"] = {k: round(v, 5) for k, v in self.errors.items()}
        for key in ("source", "note", "reason"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.setting:
            out["setting"] = self.setting
        return out


@dataclass
class AutoChoice:
    """The chosen candidate's rate-controlled result and the report of every candidate."""

    result: RateResult
    codec: str
    metric: str
    candidates: list[CandidateReport]
    seconds: float

    @property
    def chosen(self) -> CandidateReport:
        """The winner's report."""
        return next(c for c in self.candidates if c.state == "chosen")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly record: what was asked, what won, every candidate, the time spent choosing."""
        return {"requested": AUTO, "chosen": self.codec, "metric": self.metric, "seconds": round(self.seconds, 4),
                "candidates": [c.as_dict() for c in self.candidates]}


class _Candidate:
    """One codec's way through the choice: its staged fit, the bitstream it keeps, its report."""

    def __init__(self, codec: Codec, image: np.ndarray, budget: Budget, label: str, metric: str) -> None:
        self.codec = codec
        self.image = image
        self.metric = metric
        self.report = CandidateReport(codec.name)
        self.fitting = Fitting(codec, image, budget, label=label)
        self.budget_error: BudgetError | None = None  #: why nothing of this codec fits, when nothing does

    def _quality(self, result: RateResult) -> None:
        """Measure or predict ``result``'s quality; keep it (and its bitstream) when it is better."""
        from gateway.codec.image_metrics import quality

        rep = self.report
        if self.codec.fast_decode:
            values, kind, errors, source, note = quality(self.image, self.codec.decode(result.bitstream)), \
                "measured", {}, None, None
        elif self.codec.predicts_quality:
            est = self.codec.predict_quality(self.image, result.bitstream)
            values, kind, errors, source, note = est.values, "predicted", est.errors, est.source, est.note
        else:
            values, kind, errors, source, note = {}, None, {}, None, f"{self.codec.name} cannot tell its quality here"
        if rep.result is None or _better(values, rep.quality, self.metric):
            rep.result, rep.quality, rep.kind, rep.errors, rep.source, rep.note = \
                result, dict(values), kind, dict(errors), source, note
            rep.bytes, rep.setting = result.bytes, dict(result.setting)

    def step(self, probe: bool) -> None:
        """Run the probe (``probe``) or the full search, and rate what it returns; errors end in the report."""
        t0 = time.perf_counter()
        rep = self.report
        try:
            if probe:
                self._quality(self.fitting.probe())
            elif self.codec.fast_decode:  # the others' probe was already their whole search
                result = self.fitting.finish()
                if rep.result is None or result.knobs != rep.result.knobs:
                    self._quality(result)
            rep.state = "finished"
        except BudgetError as e:
            rep.state, rep.reason = "unfit", str(e)
            rep.result = None
            self.budget_error = e
        except (SatgwError, OSError, ValueError, RuntimeError) as e:  # one candidate's failure is not the job's
            if probe or rep.result is None:
                rep.state, rep.reason, rep.result = "failed", f"{type(e).__name__}: {e}", None
            else:  # the probe's bitstream still stands
                rep.reason = f"kept its probe: its full search failed ({type(e).__name__}: {e})"
        rep.seconds += time.perf_counter() - t0


def _better(values: dict[str, float], than: dict[str, float], metric: str) -> bool:
    """Whether ``values`` beat ``than`` on ``metric``, then the other metrics (one candidate's own bitstreams)."""
    for m in (metric, *(x for x in METRICS if x != metric)):
        a, b = values.get(m), than.get(m)
        if a is not None and b is not None and a != b:
            return a > b
    return not than


def _sure(rep: CandidateReport, metric: str) -> float | None:
    """What ``rep`` is sure to reach: a measured value, or a prediction less its slack (None: nothing sure)."""
    value = rep.value(metric)
    if value is None or rep.state != "finished":
        return None
    if rep.kind == "measured":
        return value
    err = rep.errors.get(metric)
    return None if err is None else value - PREDICTION_SLACK * err


def choose_codec(codecs: Sequence[Codec], image: np.ndarray, budget: Budget, settings: AutoSettings, *,
                 label: str = "the image", on_fallback: Callable[[str, str], None] | None = None) -> AutoChoice:
    """Fit ``image`` into ``budget`` with every codec of ``codecs`` and return the best (see the module docstring).

    ``on_fallback(codec, note)`` is called for a candidate whose quality came
    from a fallback rule (e.g. CADC without a calibration), so the caller can
    log it.  Raises :class:`BudgetError` when no candidate fits (with the
    fewest frames any of them needs), and the first candidate's error when
    every candidate failed.
    """
    t0 = time.perf_counter()
    image = as_rgb_array(image)
    if not codecs:
        raise ConfigError("auto has no candidate codecs to choose from")
    metric = settings.metric
    cands = [_Candidate(c, image, budget, label, metric) for c in codecs]
    floor: float | None = None  # the best value an earlier candidate is sure to reach
    for cand in cands:
        rep = cand.report
        cand.step(probe=True)
        value = rep.value(metric)
        if rep.state != "finished":
            continue
        if cand.codec.fast_decode and floor is not None and value is not None and value + settings.margin < floor:
            rep.state = "dropped"
            rep.reason = f"probe {metric} {value:.4g} + margin {settings.margin:g} is below {floor:.4g}"
            continue
        cand.step(probe=False)
        sure = _sure(rep, metric)
        if sure is not None:
            floor = sure if floor is None else max(floor, sure)
    reports = [c.report for c in cands]
    for rep in reports:
        if rep.source not in (None, "calibration") and rep.note and on_fallback is not None:
            on_fallback(rep.codec, rep.note)
    ranked = [r for r in reports if r.result is not None and r.state in ("finished", "dropped")]
    if not ranked:
        budget_errors = [c.budget_error for c in cands if c.budget_error is not None]
        if budget_errors:
            needed = [e.frames_needed for e in budget_errors if e.frames_needed is not None]
            least = min(needed) if needed else None
            names = ", ".join(c.codec.name for c in cands)
            more = f"at least {least} frames" if least is not None else "a larger frame size"
            raise BudgetError(f"{label} fits none of the auto candidates ({names}) in {budget.frames} frames of "
                              f"{budget.frame_size} B; it needs {more}", least)
        raise CodecError(f"{label}: every auto candidate failed: "
                         + "; ".join(f"{r.codec}: {r.reason}" for r in reports))
    # Known qualities first, then the best on the metric; ties keep the candidate list's order.
    best = max(ranked, key=lambda r: (r.value(metric) is not None, r.value(metric) or 0.0, -reports.index(r)))
    best.state = "chosen"
    assert best.result is not None
    return AutoChoice(best.result, best.codec, metric, reports, time.perf_counter() - t0)
