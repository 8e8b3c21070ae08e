"""After the search: let a codec that can refine its symbols spend encoder time on the chosen setting.

Refinement at a fixed setting lowers the model's rate-distortion loss, and in
practice both the size and the distortion (CADC at Kodak size: 8-20 % fewer
bytes and +0.3 dB at the same setting).  So there are two passes:

1. refine the search's pick; keep it if it fits and its distortion is
   lower than the pick's;
2. if that left bytes unused, search again for the budget scaled by the
   saving (a lower λ), refine that setting, and keep it if it fits and its
   distortion is the lowest so far.

Each pass's symbols are coded at the Δ (within a few codes of the pass's)
that fills the budget at its λ, their distortion measured again there.

The search's own pick stays the fallback, so refinement never breaks the
budget and never sends a picture the model measures as worse than the search's.
"""

from __future__ import annotations

from typing import Any

from gateway.codec.base import Knobs
from gateway.ratecontrol.search import Candidate, Search, boundary

#: Pass 2 runs when pass 1 left at least this share of the budget unused.
_SPEND_THRESHOLD = 0.03
#: Pass 2 searches for the budget scaled by the saving times this (the saving at a lower λ is smaller).
_SPEND_CAUTION = 0.97
#: Settling a pass's Δ moves it at most this many codes (CADC: ~0.7 % of the size a code) either way.
_SETTLE_CODES = 16
#: ... with at most this many real encodes beyond the pass's own.
_SETTLE_ENCODES = 3


def refine_candidate(search: Search, cand: Candidate) -> tuple[Candidate, dict[str, Any] | None]:
    """The refined candidate (or ``cand`` when refinement does not pay) and a report (None: not refined).

    A pass is kept only if it fits and its distortion is below the best so
    far, starting from the search's pick: at a fixed budget the aim is the
    lowest distortion, and a refinement at a high λ may trade distortion for
    bytes, which pass 2 then spends.  Each pass's refined symbols are first
    settled on the Δ that fills the budget at their λ (:func:`_settle_delta`):
    a refined bitstream rarely lands exactly on the budget, and one a few
    bytes over would otherwise be lost.
    """
    codec = search.codec
    analysis = search.analysis(cand.knobs.scale_code)
    if not codec.refines(analysis):
        return cand, None
    passes: list[dict[str, Any]] = []
    best, distortion, chosen = cand, None, None

    def consider(refined: Any, knobs: Knobs, report: dict[str, Any], index: int) -> int:
        """Settle pass ``index``'s symbols, record it, keep it if it beats the best; its unsettled size."""
        nonlocal best, distortion, chosen
        data = codec.encode(refined, knobs, search.size)
        entry = {**report, "knobs": _knobs_of(knobs), "bytes": len(data)}
        settled = _settle_delta(search, refined, knobs, data)
        if settled is not None and settled[0] != knobs:
            entry.update(settled_knobs=_knobs_of(settled[0]), settled_bytes=len(settled[1]),
                         settled_distortion=round(codec.symbol_distortion(refined, settled[0]), 5))
            dist = entry["settled_distortion"]
        else:
            dist = report["distortion_after"]
        passes.append(entry)
        if settled is not None and dist < distortion:  # type: ignore[operator]
            best, distortion, chosen = Candidate(settled[0], settled[1]), dist, index
        return len(data)

    refined, report = codec.refine_symbols(analysis, cand.knobs)
    distortion = report["distortion_before"]  # the search's pick, as the model measures it
    size = consider(refined, cand.knobs, report, 0)
    if size <= search.budget * (1.0 - _SPEND_THRESHOLD):
        wider = Search(codec, search.image, int(search.budget * len(cand.data) / size * _SPEND_CAUTION))
        wider.analyses = search.analyses  # the same pictures: no second analyze
        more = wider.run(1)
        if more is not None and more.knobs != cand.knobs:
            refined2, report2 = codec.refine_symbols(wider.analysis(more.knobs.scale_code), more.knobs)
            consider(refined2, more.knobs, report2, 1)
    return best, {"passes": passes, "chosen_pass": chosen, "search_bytes": len(cand.data)}


def _settle_delta(search: Search, analysis: Any, knobs: Knobs, data: bytes) -> tuple[Knobs, bytes] | None:
    """The smallest Δ within :data:`_SETTLE_CODES` of ``knobs``' whose bitstream of ``analysis`` fits, coded.

    Found on the codec's size predictions, then confirmed by real encodes
    (stepping Δ up while over budget, at most :data:`_SETTLE_ENCODES`).  None
    when nothing in the window fits.  ``data``: the bitstream at ``knobs``.
    """
    codec, budget, deltas = search.codec, search.budget, search.deltas
    if knobs.delta_code not in deltas:
        return (knobs, data) if len(data) <= budget else None
    j = deltas.index(knobs.delta_code)
    lo, hi = max(0, j - _SETTLE_CODES), min(len(deltas) - 1, j + _SETTLE_CODES)
    at = lambda jj: Knobs(knobs.lam_code, deltas[jj], knobs.scale_code)  # noqa: E731
    predicted = lambda jj: max(1, round(codec.estimate_bytes(analysis, at(jj))))  # noqa: E731
    if predicted(hi) > budget:
        return None
    jj = boundary(predicted, budget, lo, hi, per_doubling=search.delta_per_doubling)
    for _ in range(_SETTLE_ENCODES):
        coded = data if jj == j else codec.encode(analysis, at(jj), search.size)
        if len(coded) <= budget:
            return at(jj), coded
        if jj == hi:
            break
        jj += 1
    return None


def _knobs_of(knobs: Knobs) -> list[int]:
    return [knobs.lam_code, knobs.delta_code, knobs.scale_code]
