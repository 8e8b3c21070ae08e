"""The sender's inbox folder: image files dropped there become jobs.

A file is taken once its size and modification time have been stable for
one poll (so a file still being copied in is left alone). Before anything is
read the inbox looks at the entry itself (``lstat``): symbolic links, FIFOs,
sockets and devices are refused (a link could point at any file the sender
can read; opening a FIFO would block the daemon), folders are left alone,
and a file above ``limits.max_image_bytes`` is refused from its size. The file
is then read through a descriptor opened without following links and checked
again, so what is read is what was looked at.

A file whose name and content are those of a job still on its way is
deleted without a second job (a crash between accepting and deleting must not
send it twice); a file that was sent before and finished is a resubmission
and is sent again. Every file the inbox does not send is logged with why;
refused files move to ``.rejected/``. While the spool cannot take jobs
(disk full, file gone) files stay where they are and are taken later.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Callable

from gateway.errors import SatgwError, StoreUnavailable
from gateway.transport.eventlog import EventLog

MAX_FILES_PER_SCAN = 256
TEMP_SUFFIXES = (".tmp", ".part")
REJECTED = ".rejected"


class Refused(Exception):
    """An inbox entry that will not be sent, and why (a sentence)."""


class Inbox:
    """Scans one folder; ``accept(data, name)`` spools a job (raising SatgwError to refuse it).

    ``in_flight(name, sha256)`` gives the id of a job with that name and
    content that is still on its way, or None.
    """

    def __init__(
        self,
        folder: str | Path,
        accept: Callable[[bytes, str], int],
        in_flight: Callable[[str, str], int | None],
        log: EventLog,
        max_bytes: int,
    ) -> None:
        self.folder = Path(folder)
        self.accept, self.in_flight, self.log, self.max_bytes = accept, in_flight, log, max_bytes
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._told: set[str] = set()  # entries left in place that were already logged (folders)

    def scan(self) -> None:
        """Take every file that was stable since the last scan."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            names = sorted(n for n in os.listdir(self.folder) if not n.startswith("."))
        except OSError as e:
            self.log.throttled("inbox", 60, "error", "inbox_error", error=str(e))
            return
        seen: dict[str, tuple[int, int, int]] = {}
        for name in names[:MAX_FILES_PER_SCAN]:
            path = self.folder / name
            try:
                st = os.lstat(path)
            except OSError:
                continue  # gone meanwhile
            try:
                self._look(name, st)
            except Refused as e:
                self._refuse(path, str(e))
                continue
            if stat.S_ISDIR(st.st_mode) or name.endswith(TEMP_SUFFIXES):
                continue
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            seen[name] = sig
            if self._seen.get(name) != sig:
                continue  # still being written, or new: take it when it has been stable for one poll
            self._take(path, sig)
        self._seen = seen
        self._told &= set(names)

    def _look(self, name: str, st: os.stat_result) -> None:
        """Refuse an entry from what ``lstat`` says, before anything is opened."""
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            raise Refused("it is a symbolic link; the inbox takes only plain files (copy the image in)")
        if stat.S_ISDIR(mode):
            if name not in self._told:
                self._told.add(name)
                self.log.warning("inbox_skipped", file=name, reason="it is a folder; the inbox takes only plain files "
                                 "(left where it is)")
            return
        if not stat.S_ISREG(mode):
            raise Refused("it is not a plain file (a FIFO, socket or device); the inbox takes only plain files")
        if st.st_size > self.max_bytes:
            raise Refused(f"it is {st.st_size} bytes, above limits.max_image_bytes = {self.max_bytes}")

    def _read(self, path: Path, sig: tuple[int, int, int]) -> bytes:
        """The file's bytes, read through a descriptor that does not follow links and is checked again."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused("it is not a plain file; the inbox takes only plain files")
            if st.st_size > self.max_bytes:
                raise Refused(f"it is {st.st_size} bytes, above limits.max_image_bytes = {self.max_bytes}")
            if (st.st_size, st.st_mtime_ns, st.st_ino) != sig:
                raise InterruptedError("changed while being taken")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(self.max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            raise Refused(f"it grew above limits.max_image_bytes = {self.max_bytes} while being read")
        return data

    def _take(self, p: Path, sig: tuple[int, int, int]) -> None:
        try:
            data = self._read(p, sig)
        except Refused as e:
            self._refuse(p, str(e))
            return
        except InterruptedError:
            return  # it changed: look again next poll
        except OSError as e:
            self._refuse(p, f"it cannot be read ({e.strerror or e})")
            return
        mid = self.in_flight(p.name, hashlib.sha256(data).hexdigest())
        if mid is not None:
            self.log.info("inbox_skipped", file=p.name, id=mid,
                          reason="the same file (name and content) is still on its way; not sent twice")
            self._unlink(p)
            return
        try:
            self.accept(data, p.name)
        except StoreUnavailable as e:  # the spool cannot take jobs now: keep the file for later
            self.log.throttled("inbox_waiting", 60, "warning", "inbox_waiting", file=p.name, reason=str(e))
            return
        except SatgwError as e:
            self._refuse(p, str(e))
            return
        self._unlink(p)

    def _unlink(self, p: Path) -> None:
        try:
            p.unlink()
        except OSError as e:
            self.log.throttled("inbox_unlink", 60, "error", "inbox_error", file=p.name, error=str(e))

    def _refuse(self, p: Path, reason: str) -> None:
        if p.name in self._told:
            return  # refused before and could not be moved: said once is enough
        self.log.warning("inbox_rejected", file=p.name, reason=reason)
        rejected = self.folder / REJECTED
        try:
            rejected.mkdir(exist_ok=True)
            os.replace(p, rejected / p.name)  # a link or FIFO moves as itself; nothing is opened
        except OSError as e:
            self._told.add(p.name)
            self.log.error("inbox_error", file=p.name, error=f"cannot move it to {REJECTED}/: {e}")
