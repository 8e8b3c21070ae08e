"""The gateway's exception hierarchy.

Every error the gateway raises on purpose derives from :class:`SatgwError`, so a
daemon can catch that one type around untrusted input and keep running. Each
class says what went wrong: a config (:class:`ConfigError`), an image or
bitstream (:class:`CodecError` and below), a budget (:class:`BudgetError`), a
job (:class:`RequestError`), storage (:class:`StoreError`; :class:`StoreUnavailable`
when its disk refuses), the host rather than the input (:class:`HostError`), a daemon
or peer (:class:`DaemonError`). The packetizer keeps its own hierarchy
(:class:`packetizer.errors.PacketizerError`); the link simulator's derives
from this one.
"""

from __future__ import annotations


class SatgwError(Exception):
    """Base class of every deliberate satgw gateway error."""


class ConfigError(SatgwError):
    """A configuration file or option is missing, unknown or out of range."""


class CodecError(SatgwError):
    """An image could not be encoded or decoded."""


class BitstreamError(CodecError):
    """A bitstream is truncated, corrupted, of an unknown version, or oversized."""


class ChecksumMismatch(BitstreamError):
    """Decoded symbols disagree with the checksum in the header (decoder/model mismatch)."""


class ModelMismatch(BitstreamError):
    """The bitstream was made by a model bundle other than the one loaded."""


class BundleError(SatgwError):
    """A model bundle is missing a part, or a part does not fit the config."""


class BudgetError(SatgwError):
    """No codec setting fits the packet budget.

    ``frames_needed`` is the smallest budget (in frames) that would fit, or
    ``None`` when even the smallest setting does not fit any sane budget.
    """

    def __init__(self, message: str, frames_needed: int | None = None) -> None:
        super().__init__(message)
        self.frames_needed = frames_needed


class RequestError(SatgwError):
    """A job or request is refused: an empty, oversized or unreadable image, a bad option, a full queue.

    The reason goes back to whoever asked (``satgw send``, the inbox's
    ``.rejected`` folder, a failed job's ``reason``); the daemon goes on.
    """


class StoreError(SatgwError):
    """Durable storage (the sender's spool, the ground's frame store) refused an operation.

    It cannot be opened, is corrupt or locked, the id is unknown, or the state
    change is not allowed.
    """


class StoreUnavailable(StoreError):
    """Durable storage cannot be written right now: its disk is full or read-only, or its file is gone.

    Nothing was written. It is the host's fault, not the data's: keep the work and try again once the
    operator has made room (the daemons report it in ``status`` and their log, and recover by themselves).
    """


class HostError(SatgwError):
    """The host failed, not the input: a full or read-only disk, memory, a model bundle that does not load.

    Work that fails this way is kept and retried later, never dropped.
    """


class DaemonError(SatgwError):
    """A daemon could not start or answer (bad endpoint, peer unreachable)."""
