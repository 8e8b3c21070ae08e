"""Decoding off the ground station's event loop: bitstream -> ``<id>.png`` + ``<id>.json``.

:func:`decode_message` does one job (decode with the codec named in the
bitstream header, write both files atomically: temp file, fsync, rename,
directory fsync). :class:`DecodeWorker` runs jobs one at a time in a child
process (default: a crashing or hanging decoder costs one message, not the
daemon; it is killed after a timeout and restarted) or in a thread.

File names are deterministic, so re-running a job after a crash rewrites the
same two files: the outbox never holds a second copy of a message.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack


@dataclass
class DecodeJob:
    """Everything needed to decode one message and describe it."""

    message_id: int
    bitstream: bytes
    outbox: str
    info: dict[str, Any] = field(default_factory=dict)  # frame counts, timings, META
    bundle: str | None = None  # CADC model bundle folder (None: the embedded cadc-tiny)


def _meta(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        m = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_str_len=1024, max_bin_len=1024,
                            max_array_len=64, max_map_len=64)
    except Exception:  # a META frame is untrusted input like any other
        return {}
    return m if isinstance(m, dict) else {}


def decode_message(job: DecodeJob) -> dict[str, Any]:
    """Decode ``job`` and write ``<outbox>/<id>.png`` then ``<id>.json``; returns the JSON record.

    Raises :class:`gateway.errors.BitstreamError` (or another CodecError) for a
    bad bitstream; nothing is written then.
    """
    import numpy as np

    from gateway.codec import bitstream as bs
    from gateway.codec.base import Knobs
    from gateway.codec.image_io import png_bytes, write_atomic
    from gateway.codec.registry import get_codec

    header, _ = bs.unpack(job.bitstream)
    codec = get_codec(header.codec_name, job.bundle)  # loaded once per worker; not part of the decode time
    t0 = time.perf_counter()
    image, decode_info = codec.decode_with_info(job.bitstream)
    decode_s = time.perf_counter() - t0
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
        from gateway.errors import CodecError

        raise CodecError(f"decoder returned {type(image).__name__}, not an HxWx3 uint8 image")
    out = Path(job.outbox)
    out.mkdir(parents=True, exist_ok=True)
    png = png_bytes(image)
    info = job.info
    meta = _meta(info.get("meta"))
    h, w = image.shape[:2]
    frame_size = int(info.get("frame_size", 450))
    n, received, repeated = int(info.get("n", 0)), int(info.get("received", 0)), int(info.get("repeated", 0))
    setting = codec.describe(Knobs(header.lam_code, header.delta_code, header.scale_code))
    first_at, assembled_at = info.get("first_at"), info.get("assembled_at")
    record = {
        "message_id": job.message_id,
        "source_name": meta.get("name"),
        "source_bytes": meta.get("size"),
        "codec": header.codec_name,
        "setting": setting,
        "width": w,
        "height": h,
        "coded_size": list(header.coded_size),
        "bitstream_bytes": len(job.bitstream),
        "frames_total": n,
        "frames_data": int(info.get("k", 0)),
        "frames_received": received,
        "frames_lost": max(0, n - received),
        "frames_repeated": repeated,
        "frame_size": frame_size,
        "bytes_on_air": n * frame_size,
        "bytes_received_on_air": (received + repeated) * frame_size,
        "bpp": round(len(job.bitstream) * 8 / (w * h), 5),
        "bpp_on_air": round(n * frame_size * 8 / (w * h), 5),
        "caption": decode_info.get("caption"),
        "timings": {
            "first_frame_at": first_at,
            "assembled_at": assembled_at,
            "decoded_at": time.time(),
            "transfer_s": None if first_at is None or assembled_at is None else round(assembled_at - first_at, 4),
            "decode_s": round(decode_s, 4),
            "decode_stages_ms": decode_info.get("timings_ms"),
        },
        "png": f"{job.message_id}.png",
    }
    write_atomic(out / f"{job.message_id}.png", png)
    write_atomic(out / f"{job.message_id}.json", (json.dumps(record, indent=1, default=str) + "\n").encode())
    return record


def _run_job(job: DecodeJob) -> tuple[str, Any]:
    try:
        return ("ok", decode_message(job))
    except Exception as e:  # every decoder error becomes a failed message with its reason
        return ("error", f"{type(e).__name__}: {e}")


def _child_main(conn: Any, parent_pid: int) -> None:
    """Child process loop: one job in, one result out; exits when the parent is gone."""
    try:
        import gateway.codec.registry  # noqa: F401  (warm the import before the first job)
    except Exception:
        pass
    while True:
        if os.getppid() != parent_pid:
            return  # the daemon was killed: do not linger as an orphan
        try:
            if not conn.poll(1.0):
                continue
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(_run_job(job))
        except (EOFError, OSError):
            return


class DecodeWorker:
    """Runs decode jobs one at a time in a child process or a thread; results come back via :meth:`poll`."""

    def __init__(self, mode: str = "process", timeout_s: float = 600.0) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"decode worker mode must be process or thread, not {mode!r}")
        self.mode, self.timeout_s = mode, timeout_s
        self._jobs: "queue.Queue[DecodeJob]" = queue.Queue()
        self._results: "queue.Queue[tuple[int, str, Any]]" = queue.Queue()
        self._waiting: list[DecodeJob] = []
        self._current: tuple[DecodeJob, float] | None = None
        self._proc: Any = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if mode == "thread":
            self._thread = threading.Thread(target=self._thread_main, name="decoder", daemon=True)
            self._thread.start()

    def pending(self) -> int:
        """Jobs submitted and not yet reported."""
        if self.mode == "thread":
            return self._jobs.qsize() + (1 if self._current else 0)
        return len(self._waiting) + (1 if self._current else 0)

    def submit(self, job: DecodeJob) -> None:
        """Queue one job."""
        if self.mode == "thread":
            self._jobs.put(job)
        else:
            self._waiting.append(job)

    def _thread_main(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            self._current = (job, time.monotonic())
            status, value = _run_job(job)
            self._current = None
            self._results.put((job.message_id, status, value))

    def _start_child(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, os.getpid()), name="satgw-decoder", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill_child(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def poll(self) -> list[tuple[int, str, Any]]:
        """Finished jobs as (message_id, "ok" | "error" | "crashed", record or reason); never blocks."""
        if self.mode == "thread":
            out = []
            while True:
                try:
                    out.append(self._results.get_nowait())
                except queue.Empty:
                    return out
        out = []
        if self._current is not None:
            job, started = self._current
            try:
                if self._conn.poll(0):
                    status, value = self._conn.recv()
                    out.append((job.message_id, status, value))
                    self._current = None
                elif not self._proc.is_alive():
                    code = self._proc.exitcode
                    self._kill_child()
                    out.append((job.message_id, "crashed", f"decoder process died (exit code {code})"))
                    self._current = None
                elif time.monotonic() - started > self.timeout_s:
                    self._kill_child()
                    out.append((job.message_id, "crashed", f"decode took longer than {self.timeout_s:g} s"))
                    self._current = None
            except (EOFError, OSError) as e:
                self._kill_child()
                out.append((job.message_id, "crashed", f"decoder process connection lost ({e})"))
                self._current = None
        if self._current is None and self._waiting:
            if self._proc is None or not self._proc.is_alive():
                self._kill_child()
                self._start_child()
            job = self._waiting.pop(0)
            try:
                self._conn.send(job)
                self._current = (job, time.monotonic())
            except (EOFError, OSError) as e:
                self._kill_child()
                out.append((job.message_id, "crashed", f"cannot reach the decoder process ({e})"))
        return out

    def close(self) -> None:
        """Stop the worker (a running decode is abandoned; it is redone after restart)."""
        self._stop.set()
        self._kill_child()
