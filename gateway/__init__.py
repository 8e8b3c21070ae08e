"""satgw gateway: codecs, rate control, spool, daemons and the command line."""

__version__ = "0.1.0"
