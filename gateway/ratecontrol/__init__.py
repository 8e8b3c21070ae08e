"""Rate control: the best codec setting whose whole bitstream fits a packet budget."""

from gateway.ratecontrol.search import RateResult, fit, fit_bytes

__all__ = ["RateResult", "fit", "fit_bytes"]
