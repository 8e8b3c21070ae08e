"""Rate control: the best codec setting whose whole bitstream fits a packet budget.

One controller drives every codec (classical and CADC) through the
:class:`gateway.codec.base.Codec` interface, so all are compared at exactly
the same budget. :mod:`.budget` turns frames into bytes (asking the
packetizer), :mod:`.search` finds the setting, :mod:`.fit` is the entry
point. How the search works, and why: ``docs/ratecontrol.md``.
"""

from gateway.ratecontrol.budget import Budget
from gateway.ratecontrol.fit import Fitting, RateResult, fit, fit_bytes

__all__ = ["Budget", "Fitting", "RateResult", "fit", "fit_bytes"]
