"""Stand-in decoders for the decode-worker tests (module level, so a spawned child process can import them)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gateway.errors import BitstreamError


def ok(job: Any) -> dict[str, int]:
    """Succeeds at once, saying which process it ran in."""
    return {"pid": os.getpid(), "id": job.message_id}


def crash(job: Any) -> None:
    """Dies the way a segfaulting decoder does: no exception, no reply."""
    os._exit(3)


def hang(job: Any) -> None:
    """Never finishes (in any test's time)."""
    time.sleep(600)


def bad_bitstream(job: Any) -> None:
    """Refuses the bitstream, as a decoder does for corrupt input."""
    raise BitstreamError("payload is corrupt")


def crash_first_time(job: Any) -> dict[str, int]:
    """Dies on a message's first attempt, succeeds on the next (a marker file in the outbox remembers)."""
    marker = Path(job.outbox) / f".{job.message_id}.tried"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(3)
    return ok(job)


def disk_full(job: Any) -> None:
    """Fails the way a full outbox does (the host's fault, not the bitstream's)."""
    from gateway.errors import HostError

    raise HostError("cannot write the picture to the outbox: No space left on device")


def checked(arg: Any) -> dict[str, Any]:
    """A start-up check that passes, saying where it ran."""
    return {"pid": os.getpid(), "arg": arg}
