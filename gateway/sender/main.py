"""``satgw sender``: options, config, then the sender daemon until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from gateway.daemon.config import load_sender_config
from gateway.daemon.startup import daemon_parser, link_overrides, run_daemon


def _parser() -> argparse.ArgumentParser:
    p = daemon_parser("sender", "Run the sender daemon.", "sender-side")
    p.add_argument("--spool", help="SQLite spool file")
    p.add_argument("--inbox", help="folder polled for new images")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw sender``."""
    from gateway.sender.daemon import SenderDaemon

    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    own = {"spool": a.spool, "inbox": a.inbox}
    return run_daemon("sender", load_sender_config, a.config, {**own, **link_overrides(a)}, SenderDaemon)
