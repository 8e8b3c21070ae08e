"""The mapping between header byte codes and CADC's continuous knobs λ and Δ.

Both knobs are log-spaced over the config's range so that one code step is
the same relative change everywhere.  The header's ``lam_code`` follows the
codec-wide convention of :class:`gateway.codec.base.Knobs` (higher code =
more bits, better quality).  λ weighs rate in the training loss
``L = λ·R + D`` (paper eq. 13), so a *higher* code means a *smaller* λ:
``λ(code) = lam_max · (lam_min/lam_max)^(code/255)``.  Δ is the UGAQ bin
width; a higher ``delta_code`` means wider bins and fewer bits:
``Δ(code) = delta_min · (delta_max/delta_min)^(code/255)``.
"""

from __future__ import annotations

import math

from gateway.errors import ConfigError

CODE_MAX = 255


def _check_code(code: int, name: str) -> int:
    code = int(code)
    if not 0 <= code <= CODE_MAX:
        raise ConfigError(f"{name} {code} is outside 0..{CODE_MAX}")
    return code


def lam_from_code(code: int, lam_range: tuple[float, float]) -> float:
    """λ for a header ``lam_code`` (255 = smallest λ = most bits)."""
    lo, hi = lam_range
    return hi * (lo / hi) ** (_check_code(code, "lam_code") / CODE_MAX)


def code_from_lam(lam: float, lam_range: tuple[float, float]) -> int:
    """Nearest ``lam_code`` for λ (clamped to the trained range)."""
    lo, hi = lam_range
    lam = min(max(float(lam), lo), hi)
    return int(round(CODE_MAX * math.log(hi / lam) / math.log(hi / lo)))


def delta_from_code(code: int, delta_range: tuple[float, float]) -> float:
    """Δ (UGAQ bin width) for a header ``delta_code`` (255 = widest bins)."""
    lo, hi = delta_range
    return lo * (hi / lo) ** (_check_code(code, "delta_code") / CODE_MAX)


def code_from_delta(delta: float, delta_range: tuple[float, float]) -> int:
    """Nearest ``delta_code`` for Δ (clamped to the range)."""
    lo, hi = delta_range
    delta = min(max(float(delta), lo), hi)
    return int(round(CODE_MAX * math.log(delta / lo) / math.log(hi / lo)))
