"""The decode worker: results, bad bitstreams, a crashing or hanging decoder (killed, reported, restarted)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import decode_runners
from gateway.ground.decode_worker import DecodeOutcome, DecodeWorker
from gateway.ground.output import DecodeJob
from gateway.store.framestore import StoredMessage

pytestmark = pytest.mark.timeout(120)


def job(mid: int, outbox: Path) -> DecodeJob:
    msg = StoredMessage(mid, "assembled", 1, 1, 0.0, 0.0, 1.0, None, 1, 0, 0, None, None, None, 1)
    return DecodeJob(msg, b"bits", str(outbox), 450)


def outcomes(worker: DecodeWorker, count: int, timeout: float = 60.0) -> list[DecodeOutcome]:
    """Poll until ``count`` jobs have been reported (bounded)."""
    out: list[DecodeOutcome] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} outcomes within {timeout} s"
        out += worker.poll()
        time.sleep(0.02)
    return out


@pytest.fixture
def make_worker():
    workers: list[DecodeWorker] = []

    def make(mode: str, run, timeout_s: float = 60.0) -> DecodeWorker:
        w = DecodeWorker(mode, timeout_s, run=run)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.close()


def test_jobs_run_in_a_child_process_one_at_a_time(make_worker, tmp_path) -> None:
    w = make_worker("process", decode_runners.ok)
    for mid in (1, 2):
        w.submit(job(mid, tmp_path))
    assert w.pending() == 2
    done = outcomes(w, 2)
    assert [(o.message_id, o.status) for o in done] == [(1, "ok"), (2, "ok")]
    pids = {o.record["pid"] for o in done}
    assert len(pids) == 1 and os.getpid() not in pids  # one child, reused
    assert w.pending() == 0


def test_a_bad_bitstream_is_an_error_not_a_crash(make_worker, tmp_path) -> None:
    w = make_worker("process", decode_runners.bad_bitstream)
    w.submit(job(7, tmp_path))
    (o,) = outcomes(w, 1)
    assert (o.status, o.reason) == ("error", "BitstreamError: payload is corrupt")


def test_a_crashing_decoder_is_reported_and_the_next_job_gets_a_fresh_child(make_worker, tmp_path) -> None:
    w = make_worker("process", decode_runners.crash_first_time)
    w.submit(job(5, tmp_path))
    (crashed,) = outcomes(w, 1)
    assert crashed.status == "crashed" and "exit code 3" in crashed.reason
    w.submit(job(5, tmp_path))  # what the daemon does: try again
    (retried,) = outcomes(w, 1)
    assert retried.status == "ok" and retried.record["id"] == 5


def test_a_hanging_decoder_is_killed_after_the_timeout(make_worker, tmp_path) -> None:
    w = make_worker("process", decode_runners.hang, timeout_s=1.0)
    w.submit(job(9, tmp_path))
    t0 = time.monotonic()
    (o,) = outcomes(w, 1)
    assert o.status == "crashed" and "longer than 1 s" in o.reason
    assert time.monotonic() - t0 < 30
    w.run = decode_runners.ok  # the next child runs the next job
    w.timeout_s = 60.0  # its fresh child's start-up counts: 1 s is too short on a loaded machine
    w.submit(job(10, tmp_path))
    assert outcomes(w, 1)[0].status == "ok"


def test_thread_mode_reports_the_same_outcomes(make_worker, tmp_path) -> None:
    w = make_worker("thread", decode_runners.ok)
    w.submit(job(1, tmp_path))
    (o,) = outcomes(w, 1)
    assert o.status == "ok" and o.record["pid"] == os.getpid()
    w.run = decode_runners.bad_bitstream
    w.submit(job(2, tmp_path))
    assert outcomes(w, 1)[0].status == "error"
    with pytest.raises(ValueError):
        DecodeWorker("fork")
