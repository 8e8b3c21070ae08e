"""The link simulator's exception hierarchy.

:class:`LinkSimError` is the base of every error ``link_sim`` raises on
purpose.  It derives from the gateway's :class:`~gateway.errors.SatgwError`, and
:class:`ConfigError` also from the gateway's ``ConfigError``, so code that
starts the simulator (the launcher, the demo, the benchmarks) catches the
gateway types it already handles.
"""

from __future__ import annotations

from gateway import errors as _gateway_errors


class LinkSimError(_gateway_errors.SatgwError):
    """Base class of every deliberate link simulator error."""


class ConfigError(LinkSimError, _gateway_errors.ConfigError):
    """A link config file or option is missing, unknown or out of range.

    The message starts with the key path (``forward.gilbert_elliott.p: ...``).
    """
