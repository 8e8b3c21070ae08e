"""``satgw receiver``: options, config, then the ground-station daemon until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from gateway.daemon.config import load_receiver_config
from gateway.daemon.startup import add_link_options, link_overrides, run_daemon


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="satgw receiver", description="Run the ground-station daemon.")
    p.add_argument("--config", help="daemon config YAML (configs/daemons/receiver.yaml)")
    p.add_argument("--store", help="SQLite frame store file")
    p.add_argument("--outbox", help="folder for decoded PNG + JSON")
    p.add_argument("--control", help="endpoint to bind for satgw status")
    p.add_argument("--decode-worker", choices=("process", "thread"), help="where decoding runs")
    add_link_options(p, "ground-side")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw receiver``."""
    from gateway.ground.daemon import ReceiverDaemon

    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    own = {"store": a.store, "outbox": a.outbox, "decode.worker": a.decode_worker}
    return run_daemon("receiver", load_receiver_config, a.config, {**own, **link_overrides(a)}, ReceiverDaemon)
