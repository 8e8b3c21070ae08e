"""Decoding off the ground station's event loop, in a child process (or a thread).

:class:`DecodeWorker` runs :class:`~gateway.ground.output.DecodeJob` s one at a
time. In a child process (the default) a crashing or hanging decoder costs
one attempt at one message, not the daemon: a child that dies is reported
``crashed``, one that takes longer than the timeout is killed and reported
``crashed``, and the next job starts a fresh child. Results come back through
:meth:`DecodeWorker.poll`, which never blocks.

What a failed job means is decided here (:func:`outcome_of`): a bitstream
that is itself bad is an ``error`` (the message fails for good); a failure
of the host (disk, memory, a model bundle that does not load or is not the
sender's) is a ``retry`` (the message is kept and decoded again later); an
unexpected exception counts like a crash.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from gateway.errors import BundleError, CodecError, HostError, ModelMismatch
from gateway.ground.output import DecodeJob, OutputRecord, PreviewSkipped, decode_message

Runner = Callable[[DecodeJob], "OutputRecord | PreviewSkipped"]
Status = Literal["ok", "error", "retry", "crashed"]


@dataclass(frozen=True)
class DecodeOutcome:
    """How one job ended: ``ok`` (with the record), ``error`` (a bad bitstream: do not retry),
    ``retry`` (the host failed: keep the message, try later) or ``crashed`` (the decoder died,
    hung or raised something unexpected: retry a bounded number of times). ``preview``: the job was a
    preview (:class:`~gateway.ground.output.PreviewSpec`), whose outcomes never decide the message's fate."""

    message_id: int
    status: Status
    record: Any = None
    reason: str | None = None
    preview: bool = False


@dataclass(frozen=True)
class CheckJob:
    """A function to run once in the worker (the start-up check of the decoders), with its argument."""

    fn: Callable[[Any], Any]
    arg: Any
    message_id: int = -1


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "memory" in str(e).lower())


def outcome_of(message_id: int, e: Exception, preview: bool = False) -> DecodeOutcome:
    """The outcome of a job that raised ``e``: whose fault it was decides whether it is tried again."""
    reason = f"{type(e).__name__}: {e}"
    if isinstance(e, (HostError, BundleError, ModelMismatch, OSError)) or _is_out_of_memory(e):
        # ModelMismatch: the ground has another bundle than the sender; installing the right one fixes it.
        return DecodeOutcome(message_id, "retry", reason=reason, preview=preview)
    if isinstance(e, CodecError):
        return DecodeOutcome(message_id, "error", reason=reason, preview=preview)
    return DecodeOutcome(message_id, "crashed", reason=f"unexpected error in the decoder: {reason}", preview=preview)


def _is_preview(job: DecodeJob | CheckJob) -> bool:
    return bool(getattr(job, "is_preview", False))


def _run_job(run: Runner, job: DecodeJob | CheckJob) -> DecodeOutcome:
    preview = _is_preview(job)
    try:
        if isinstance(job, CheckJob):
            return DecodeOutcome(job.message_id, "ok", record=job.fn(job.arg))
        return DecodeOutcome(job.message_id, "ok", record=run(job), preview=preview)
    except Exception as e:  # every decoder error becomes an outcome with its reason
        return outcome_of(job.message_id, e, preview)


def _child_main(conn: Any, parent_pid: int, run: Runner) -> None:
    """Child process loop: one job in, one outcome out; exits when the parent is gone."""
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
            conn.send(_run_job(run, job))
        except (EOFError, OSError):
            return


class DecodeWorker:
    """Runs decode jobs one at a time in a child process or a thread; outcomes come back via :meth:`poll`.

    ``run`` is what a job runs (default :func:`decode_message`); in process
    mode it must be a module-level function (it is pickled into the child).
    """

    def __init__(self, mode: str = "process", timeout_s: float = 600.0, run: Runner = decode_message) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"decode worker mode must be process or thread, not {mode!r}")
        self.mode, self.timeout_s, self.run = mode, timeout_s, run
        self._jobs: "queue.Queue[DecodeJob]" = queue.Queue()
        self._results: "queue.Queue[DecodeOutcome]" = queue.Queue()
        self._waiting: list[DecodeJob] = []
        self._current: tuple[DecodeJob, float] | None = None
        self._proc: Any = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if mode == "thread":
            self._thread = threading.Thread(target=self._thread_main, name="decoder", daemon=True)
            self._thread.start()

    def check(self, fn: Callable[[Any], Any], arg: Any, timeout_s: float) -> DecodeOutcome:
        """Run ``fn(arg)`` once where decodes run (a child process warms up with it) and wait for it.

        Call it before any job is submitted. ``fn`` must be a module-level function in process mode.
        """
        job = CheckJob(fn, arg)
        if self.mode == "thread":
            return _run_job(self.run, job)
        self._start_child()
        try:
            self._conn.send(job)
            if not self._conn.poll(timeout_s):
                self._kill_child()
                return DecodeOutcome(-1, "crashed", reason=f"the check took longer than {timeout_s:g} s")
            return self._conn.recv()
        except (EOFError, OSError):
            reason = self._death()
            self._kill_child()
            return DecodeOutcome(-1, "crashed", reason=reason)

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
            outcome = _run_job(self.run, job)
            self._current = None
            self._results.put(outcome)

    def _start_child(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, os.getpid(), self.run), name="satgw-decoder",
                                 daemon=True)
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

    def _death(self) -> str:
        """Why the child stopped answering: its exit code once it is reaped."""
        self._proc.join(timeout=2)
        if self._proc.exitcode is None:
            return "decoder process connection lost"
        return f"decoder process died (exit code {self._proc.exitcode})"

    def poll(self) -> list[DecodeOutcome]:
        """Finished jobs; never blocks. In process mode this also starts the next job."""
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
            crashed = None
            try:
                if self._conn.poll(0):
                    out.append(self._conn.recv())
                    self._current = None
                elif not self._proc.is_alive():
                    crashed = self._death()
                elif time.monotonic() - started > self.timeout_s:
                    crashed = f"decode took longer than {self.timeout_s:g} s"
            except (EOFError, OSError):
                crashed = self._death()  # a dead child's pipe reads as end of file
            if crashed is not None:
                self._kill_child()
                out.append(DecodeOutcome(job.message_id, "crashed", reason=crashed, preview=_is_preview(job)))
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
                out.append(DecodeOutcome(job.message_id, "crashed", reason=f"cannot reach the decoder process ({e})",
                                         preview=_is_preview(job)))
        return out

    def close(self) -> None:
        """Stop the worker (a running decode is abandoned; it is redone after restart)."""
        self._stop.set()
        self._kill_child()
