"""``satgw receiver``: options, config, then the ground-station daemon until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from gateway.daemon.config import load_receiver_config
from gateway.daemon.startup import daemon_parser, link_overrides, run_daemon


def _parser() -> argparse.ArgumentParser:
    p = daemon_parser("receiver", "Run the ground-station daemon.", "ground-side")
    p.add_argument("--store", help="SQLite frame store file")
    p.add_argument("--outbox", help="folder for decoded PNG + JSON")
    p.add_argument("--decode-worker", choices=("process", "thread"), help="where decoding runs")
    p.add_argument("--device", help="where CADC decodes: auto, cpu, cuda or cuda:N (overrides the config's device)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw receiver``."""
    from gateway.ground.daemon import ReceiverDaemon

    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    own = {"store": a.store, "outbox": a.outbox, "decode.worker": a.decode_worker, "device": a.device}
    return run_daemon("receiver", load_receiver_config, a.config, {**own, **link_overrides(a)}, ReceiverDaemon)
