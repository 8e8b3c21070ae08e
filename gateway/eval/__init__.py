"""Measuring the system: image metrics, the daemon launcher, ``satgw demo`` and its report."""
