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


# --- a stand-in progressive codec: the preview machinery without loading a model ---------------------------

STAND_IN_LAYERS = 5
STAND_IN_SIZE = (16, 12)  # (width, height) of its pictures


class StandInProgressive:
    """A progressive codec in a few lines: the payload is a 4-byte length then filler, cut into 5 equal layers;
    a prefix decodes to a flat picture whose grey level says how many layers it held."""

    progressive = True
    name = "cadc"

    @staticmethod
    def bitstream(payload_bytes: int, seed: int = 0) -> bytes:
        """A stand-in bitstream (cadc's codec id in a real header) with ``payload_bytes`` bytes after the header."""
        from gateway.codec import bitstream as bs

        header = bs.Header(bs.CODEC_IDS["cadc"], 0, *STAND_IN_SIZE, 0, 0, 0, 0)
        body = payload_bytes.to_bytes(4, "big") + bytes((seed + i) % 251 for i in range(payload_bytes - 4))
        return bs.pack(header, body)

    def prefix_layers(self, data: bytes) -> tuple[int, int]:
        payload = data[12:]
        if len(payload) < 4:
            return 0, STAND_IN_LAYERS
        total = int.from_bytes(payload[:4], "big")
        ends = [total * (i + 1) // STAND_IN_LAYERS for i in range(STAND_IN_LAYERS)]
        return sum(1 for e in ends if e <= len(payload)), STAND_IN_LAYERS

    def decode_with_info(self, data: bytes, partial: bool = False) -> tuple[Any, dict[str, Any]]:
        import numpy as np

        layers, total = self.prefix_layers(data)
        if layers < total and not partial:
            raise BitstreamError("stand-in stream is cut")
        w, h = STAND_IN_SIZE
        return np.full((h, w, 3), 40 * layers, dtype=np.uint8), {"layers": layers, "layers_total": total}

    def describe(self, knobs: Any) -> dict[str, Any]:
        return {"stand_in": True}


def _stand_in_codec(*args: Any, **kwargs: Any) -> StandInProgressive:
    return StandInProgressive()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def stand_in_progressive(job: Any) -> Any:
    """The real output writer with the stand-in codec; every picture written is logged to ``<outbox>/../writes.log``.

    A file ``<outbox>/../hang-after-write`` makes the next write hang once after its JSON is on disk: the moment
    between the outbox and the frame store that a kill -9 may hit.
    """
    from gateway.ground.output import OutputRecord, decode_message

    record = Path(job.outbox) / f"{job.message_id}.json"
    before = _stamp(record)
    result = decode_message(job, codec_for=_stand_in_codec)
    if isinstance(result, OutputRecord) and _stamp(record) != before:  # this job wrote it (a rename: a new inode)
        root = Path(job.outbox).parent
        with open(root / "writes.log", "a") as f:
            f.write(f"{job.message_id} {result.revision} {int(result.complete)} {result.frames_used}\n")
        marker = root / "hang-after-write"
        if marker.exists():
            marker.unlink()
            time.sleep(3600)
    return result
