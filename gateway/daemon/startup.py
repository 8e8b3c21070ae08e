"""Start-up shared by ``satgw sender`` and ``satgw receiver``: options, config, signals, run."""

from __future__ import annotations

import argparse
import signal
from typing import Any, Callable

from gateway.daemon.config import NULL
from gateway.errors import ConfigError, SatgwError
from gateway.transport.eventlog import EventLog
from packetizer.errors import PacketizerError


def daemon_parser(name: str, description: str, side: str) -> argparse.ArgumentParser:
    """The parser of ``satgw <name>`` with the options both daemons take; the caller adds its own."""
    p = argparse.ArgumentParser(prog=f"satgw {name}", description=description)
    p.add_argument("--config", help=f"daemon config YAML (configs/daemons/{name}.yaml)")
    p.add_argument("--control", help="endpoint to bind for the daemon's control requests (satgw send/status)")
    add_link_options(p, side)
    return p


def add_link_options(p: argparse.ArgumentParser, side: str) -> None:
    """The link, security, model and logging options both daemons take (``side``: the link side they attach to)."""
    p.add_argument("--link-endpoint", help=f"the link's {side} endpoint")
    p.add_argument("--link-control", help="the link's control endpoint")
    p.add_argument("--contact-plan", help="contact-plan file to follow instead of asking the link's control socket")
    p.add_argument("--auth-key", help="HMAC pre-shared key file")
    p.add_argument("--curve-dir", help="folder of CURVE keys from 'satgw keys'")
    p.add_argument("--bundle", help="CADC model bundle folder (default: the embedded cadc-tiny)")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument("--metrics-listen", help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9101)")


def link_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """Config overrides (dotted keys) from the options of :func:`add_link_options`."""
    return {
        "control": a.control, "link.endpoint": a.link_endpoint,
        # A contact plan given on the command line is followed: the config's link.control is cleared.
        "link.control": NULL if a.contact_plan and not a.link_control else a.link_control,
        "link.contact_plan": a.contact_plan,
        "frame.auth_key_file": a.auth_key, "curve.dir": a.curve_dir, "log_level": a.log_level, "bundle": a.bundle,
        "metrics.listen": a.metrics_listen,
    }


def run_daemon(
    name: str,
    load: Callable[[str | None, dict[str, Any]], Any],
    config_path: str | None,
    overrides: dict[str, Any],
    factory: Callable[[Any, EventLog], Any],
) -> int:
    """Load and validate the config, build the daemon, stop it on SIGTERM/SIGINT, run it.

    Exit status: 2 for a bad config, 1 when it cannot start, else the daemon's own.
    """
    log = EventLog(name)
    try:
        cfg = load(config_path, overrides)
        log = EventLog(name, cfg.log_level)
        daemon = factory(cfg, log)
    except ConfigError as e:
        log.error("config_error", error=str(e))
        return 2
    except (SatgwError, PacketizerError, OSError) as e:
        log.error("start_failed", error=str(e))
        return 1
    try:
        signal.signal(signal.SIGTERM, daemon.stop)
        signal.signal(signal.SIGINT, daemon.stop)
    except ValueError:
        pass  # not the main thread (embedded): the caller uses stop()
    return daemon.run()
