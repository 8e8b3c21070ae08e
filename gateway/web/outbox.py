"""The outbox as the web page sees it: delivered pictures' records, newest first, and their files.

Only ``<integer id>.json`` and ``<integer id>.png`` are ever opened, each
resolved and checked to lie inside the outbox (a symbolic link pointing out
of it is refused), so no request can make the page read another file.
Records are parsed once per file version (name, size, mtime) and cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_RECORD_BYTES = 1 << 20  #: a record is about 1 KB; a bigger file is not ours


class OutboxView:
    """Read-only view of the ground station's outbox folder."""

    def __init__(self, outbox: str | Path) -> None:
        self.root = Path(outbox)
        self._cache: dict[int, tuple[tuple[int, int], dict[str, Any] | None]] = {}

    def records(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` newest delivered pictures' records (newest first); unreadable ones are skipped."""
        found: dict[int, tuple[int, int]] = {}
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    stem, dot, ext = entry.name.partition(".")
                    if ext == "json" and dot and stem.isdigit() and entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found[int(stem)] = (st.st_mtime_ns, st.st_size)
        except OSError:
            return []  # no outbox yet: nothing delivered
        for mid in list(self._cache):
            if mid not in found:
                del self._cache[mid]
        newest = sorted(found, key=lambda m: found[m][0], reverse=True)[:limit]
        out = []
        for mid in newest:
            cached = self._cache.get(mid)
            if cached is None or cached[0] != found[mid]:
                cached = (found[mid], self._read(mid))
                self._cache[mid] = cached
            if cached[1] is not None:
                out.append(cached[1])
        out.sort(key=lambda r: (r.get("timings") or {}).get("decoded_at") or 0, reverse=True)
        return out

    def _read(self, mid: int) -> dict[str, Any] | None:
        p = self.file(mid, "json")
        if p is None:
            return None
        try:
            with open(p, "rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
            rec = json.loads(data) if len(data) <= MAX_RECORD_BYTES else None
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("message_id") == mid else None

    def file(self, mid: int, ext: str) -> Path | None:
        """``<outbox>/<mid>.<ext>`` if it is a regular file inside the outbox, else None."""
        if ext not in ("json", "png") or not 0 <= mid < 2**32:
            return None
        try:
            root = self.root.resolve(strict=True)
            p = (root / f"{mid}.{ext}").resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if p.parent != root or not p.is_file():
            return None  # a link out of the outbox, or not a plain file
        return p
