"""``satgw receiver`` with the stand-in progressive decoder of ``decode_runners`` (run as a script by the tests).

    python tests/stand_in_ground.py CONFIG.yaml

The real daemon, frame store, decode worker (a thread) and output writer;
only the codec is the stand-in, so a test can kill -9 the ground station
between two revisions of a picture without loading a model.
"""

from __future__ import annotations

import sys

import decode_runners
from gateway.daemon.config import load_receiver_config
from gateway.daemon.startup import run_daemon
from gateway.ground.daemon import ReceiverDaemon
from gateway.ground.decode_worker import DecodeWorker


def main() -> int:
    def build(cfg, log):  # type: ignore[no-untyped-def]
        return ReceiverDaemon(cfg, log, worker=DecodeWorker("thread", cfg.decode.timeout_s,
                                                            run=decode_runners.stand_in_progressive))

    return run_daemon("receiver", load_receiver_config, sys.argv[1], {}, build)


if __name__ == "__main__":
    sys.exit(main())
