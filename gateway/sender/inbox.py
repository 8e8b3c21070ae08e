"""The sender's inbox folder: image files dropped there become jobs.

A file is taken once its size and modification time have been stable for
one poll (so a file still being copied in is left alone), accepted unless
the spool already holds the same name and content (a crash between accepting
and deleting must not make a second job), then deleted; a refused file moves
to ``.rejected/`` with the reason logged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from gateway.errors import SatgwError
from gateway.transport.eventlog import EventLog

MAX_FILES_PER_SCAN = 256


class Inbox:
    """Scans one folder; ``accept(data, name)`` spools a job (raising SatgwError to refuse it)."""

    def __init__(
        self,
        folder: str | Path,
        accept: Callable[[bytes, str], int],
        already_spooled: Callable[[str, str], bool],
        log: EventLog,
    ) -> None:
        self.folder = Path(folder)
        self.accept, self.already_spooled, self.log = accept, already_spooled, log
        self._seen: dict[str, tuple[int, int]] = {}

    def scan(self) -> None:
        """Take every file that was stable since the last scan."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            entries = [p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        except OSError as e:
            self.log.throttled("inbox", 60, "error", "inbox_error", error=str(e))
            return
        seen = {}
        for p in sorted(entries)[:MAX_FILES_PER_SCAN]:
            if p.suffix in (".tmp", ".part"):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            seen[p.name] = sig
            if self._seen.get(p.name) != sig:
                continue  # still being written, or new: take it when it has been stable for one poll
            self._take(p)
        self._seen = seen

    def _take(self, p: Path) -> None:
        try:
            data = p.read_bytes()
            if not self.already_spooled(p.name, hashlib.sha256(data).hexdigest()):
                self.accept(data, p.name)
            p.unlink()
        except (SatgwError, OSError) as e:
            self.log.warning("inbox_rejected", file=p.name, reason=str(e))
            rejected = self.folder / ".rejected"
            try:
                rejected.mkdir(exist_ok=True)
                p.replace(rejected / p.name)
            except OSError:
                pass
