"""After the search: let a codec that can refine its symbols spend encoder time on the chosen setting.

Refinement at a fixed setting lowers the model's rate-distortion loss, and in
practice both the size and the distortion (CADC at Kodak size: 8-20 % fewer
bytes and +0.3 dB at the same setting).  So there are two passes:

1. refine the search's pick; keep it if it fits and its distortion is
   lower than the pick's;
2. if that left bytes unused, search again for the budget scaled by the
   saving (a lower λ), refine that setting, and keep it if it fits and its
   distortion is the lowest so far.

The search's own pick stays the fallback, so refinement never breaks the
budget and never sends a picture the model measures as worse than the search's.
"""

from __future__ import annotations

from typing import Any

from gateway.ratecontrol.search import Candidate, Search

#: Pass 2 runs when pass 1 left at least this share of the budget unused.
_SPEND_THRESHOLD = 0.03
#: Pass 2 searches for the budget scaled by the saving times this (the saving at a lower λ is smaller).
_SPEND_CAUTION = 0.97


def refine_candidate(search: Search, cand: Candidate) -> tuple[Candidate, dict[str, Any] | None]:
    """The refined candidate (or ``cand`` when refinement does not pay) and a report (None: not refined).

    A pass is kept only if it fits and its distortion is below the best so
    far, starting from the search's pick: at a fixed budget the aim is the
    lowest distortion, and a refinement at a high λ may trade distortion for
    bytes, which pass 2 then spends.
    """
    codec = search.codec
    analysis = search.analysis(cand.knobs.scale_code)
    if not codec.refines(analysis):
        return cand, None
    passes = []
    refined, report = codec.refine_symbols(analysis, cand.knobs)
    data = codec.encode(refined, cand.knobs, search.size)
    passes.append({**report, "knobs": _knobs(cand), "bytes": len(data)})
    best, distortion, chosen = cand, report["distortion_before"], None  # the search's pick, as the model measures it
    if report["improved"] and len(data) <= search.budget and report["distortion_after"] < distortion:
        best, distortion, chosen = Candidate(cand.knobs, data), report["distortion_after"], 0
    if len(data) <= search.budget * (1.0 - _SPEND_THRESHOLD):
        wider = Search(codec, search.image, int(search.budget * len(cand.data) / len(data) * _SPEND_CAUTION))
        wider.analyses = search.analyses  # the same pictures: no second analyze
        more = wider.run(1)
        if more is not None and more.knobs != cand.knobs:
            refined2, report2 = codec.refine_symbols(wider.analysis(more.knobs.scale_code), more.knobs)
            data2 = codec.encode(refined2, more.knobs, search.size)
            passes.append({**report2, "knobs": _knobs(more), "bytes": len(data2)})
            if len(data2) <= search.budget and report2["distortion_after"] < distortion:
                best, distortion, chosen = Candidate(more.knobs, data2), report2["distortion_after"], 1
    return best, {"passes": passes, "chosen_pass": chosen, "search_bytes": len(cand.data)}


def _knobs(cand: Candidate) -> list[int]:
    k = cand.knobs
    return [k.lam_code, k.delta_code, k.scale_code]
