"""JSONL traces of every frame's fate, for replay and offline analysis.

One JSON object per line: ``t_in`` and ``t_out`` (simulation seconds; ``t_out``
is null for a dropped frame), ``dir`` (``forward`` or ``return``), ``seq``
(the channel's offer number), ``fate`` (``delivered``, ``corrupted``, or a
drop cause: ``loss``, ``burst``, ``queue``, ``outage``, ``no_peer``,
``peer_busy``) and ``dup`` (true for the extra copy of a duplicated frame).
"""

from __future__ import annotations

import json
import os
from typing import IO, Iterator


class TraceWriter:
    """Appends fate records to a JSONL file (buffered; :meth:`flush` or :meth:`close` to write out)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._f: IO[str] = open(path, "w", encoding="utf-8", buffering=1 << 16)

    def write(self, direction: str, seq: int, t_in: float, fate: str, t_out: float | None, dup: bool = False) -> None:
        """Record one frame's fate."""
        self._f.write(
            json.dumps({"t_in": t_in, "dir": direction, "seq": seq, "fate": fate, "t_out": t_out, "dup": dup}) + "\n"
        )

    def flush(self) -> None:
        """Push buffered records to the file."""
        self._f.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._f.close()


def read_trace(path: str | os.PathLike) -> Iterator[dict]:
    """The records of a trace file, in the order they were written."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
