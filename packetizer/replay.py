"""The anti-replay window: which (epoch, sequence number) stamps of authenticated frames were already taken.

Every authenticated frame carries its sender's *epoch* and a *sequence
number* under the HMAC tag (``docs/frames.md``). A sender numbers its frames
0, 1, 2, ... within an epoch and starts a new, larger epoch whenever it
restarts, so a receiver accepts each stamp at most once:

* a larger epoch than any seen starts over (the sender restarted);
* a smaller epoch is a replay of an older life of the sender;
* within the current epoch, a sequence number already taken, or one more than
  ``size`` behind the highest taken, is refused; everything else is taken.

This is the sliding-window check of IPsec (RFC 4303, 3.4.3) and DTLS, with
the epoch in front. A retransmission is a new frame with a new sequence
number, so only true copies are refused (the link simulator's duplicates
included, which the frame store would have absorbed anyway).

The state that must survive a restart is two numbers (:attr:`ReplayWindow.state`):
restored with :meth:`ReplayWindow.restored`, every number up to the highest
one counts as taken (at worst a few frames in flight at the crash are refused
once and sent again).
"""

from __future__ import annotations

from packetizer.errors import ReplayError

#: Sequence numbers remembered behind the highest one: ample for any reordering the link does.
DEFAULT_WINDOW = 8192
_MAX_U32 = 0xFFFFFFFF


class ReplayWindow:
    """Sliding anti-replay window over ``(epoch, seq)`` stamps."""

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"replay window size must be a positive integer, got {size!r}")
        self.size = size
        self._mask = (1 << size) - 1
        self.epoch: int | None = None  #: the current epoch (None: nothing taken yet)
        self.highest = -1  #: the highest sequence number taken in the current epoch
        self._seen = 0  # bit i set: highest - i was taken

    @classmethod
    def restored(cls, state: tuple[int, int] | None, size: int = DEFAULT_WINDOW) -> "ReplayWindow":
        """A window that counts every stamp up to ``state`` = (epoch, highest) as taken (None: a fresh window)."""
        w = cls(size)
        if state is not None:
            epoch, highest = state
            w.epoch, w.highest = int(epoch), int(highest)
            w._seen = w._mask if highest >= 0 else 0
        return w

    @property
    def state(self) -> tuple[int, int] | None:
        """(epoch, highest sequence number taken), what must be saved to survive a restart; None before any."""
        return None if self.epoch is None else (self.epoch, self.highest)

    def check(self, epoch: int, seq: int) -> None:
        """Take the stamp ``(epoch, seq)``, or raise :class:`ReplayError` if it was taken or is too old."""
        if not (0 <= epoch <= _MAX_U32 and 0 <= seq <= _MAX_U32):
            raise ReplayError(f"stamp ({epoch}, {seq}) is outside the u32 range")
        if self.epoch is None or epoch > self.epoch:
            self.epoch, self.highest, self._seen = epoch, seq, 1
            return
        if epoch < self.epoch:
            raise ReplayError(
                f"frame from epoch {epoch}, older than the sender's current epoch {self.epoch}: a replay; drop it"
            )
        behind = self.highest - seq
        if behind < 0:
            self._seen = ((self._seen << -behind) | 1) & self._mask
            self.highest = seq
            return
        if behind >= self.size:
            raise ReplayError(f"frame {seq} of epoch {epoch} is older than the replay window of {self.size}; drop it")
        bit = 1 << behind
        if self._seen & bit:
            raise ReplayError(f"frame {seq} of epoch {epoch} was already received: a replay or a copy; drop it")
        self._seen |= bit
