"""``satgw web``: serve the ground station's live page (uvicorn, loopback unless told otherwise)."""

from __future__ import annotations

import argparse
import socket
import sys

from gateway.daemon.config import load_receiver_config
from gateway.errors import ConfigError
from gateway.paths import config_dir
from gateway.transport.eventlog import EventLog
from gateway.transport.http_listen import ListenAddress, check_exposure, parse_listen, read_token

DEFAULT_LISTEN = "127.0.0.1:8080"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="satgw web", description="Serve the ground station's live web page (read-only).")
    p.add_argument("--config", help="the ground station's config, for its outbox, frame store and endpoints "
                                    "(default: configs/daemons/receiver.yaml)")
    p.add_argument("--outbox", help="folder of delivered <id>.png + <id>.json (overrides the config)")
    p.add_argument("--store", help="the ground's SQLite frame store (overrides the config)")
    p.add_argument("--receiver", help="the ground station's control endpoint (default: the config's); 'none': do not ask")
    p.add_argument("--link-control", help="the link's control endpoint (default: the config's link.control); 'none'")
    p.add_argument("--sender", help="the sender's control endpoint, to show its queue (default: not asked)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN})")
    p.add_argument("--token-file", help="file holding the access token; required to listen beyond loopback")
    return p


def _endpoint(given: str | None, default: str | None) -> str | None:
    if given is None:
        return default
    return None if given.lower() == "none" else given


def bind(address: ListenAddress) -> socket.socket:
    """A listening TCP socket on ``address`` (ConfigError naming the address when it is taken)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--listen: cannot listen on {address.host}:{address.port} ({e.strerror}); "
                          "pick a free port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw web``."""
    import uvicorn

    from gateway.store.framestore_reader import FrameStoreReader
    from gateway.web.app import create_app
    from gateway.web.live import Endpoints, Sources
    from gateway.web.outbox import OutboxView
    from gateway.web.state import PageState

    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    log = EventLog("web")
    try:
        cfg = load_receiver_config(a.config or config_dir() / "daemons" / "receiver.yaml",
                                   {"outbox": a.outbox, "store": a.store})
        try:
            address = parse_listen(a.listen)
        except ValueError as e:
            raise ConfigError(f"--listen: {e}") from None
        check_exposure(address, a.token_file, "--listen")
        token = read_token(a.token_file, "--token-file")
        sock = bind(address)
    except ConfigError as e:
        log.error("config_error", error=str(e))
        return 2
    endpoints = Endpoints(receiver=_endpoint(a.receiver, cfg.control), sender=_endpoint(a.sender, None),
                          link=_endpoint(a.link_control, cfg.link.control))
    state = PageState(OutboxView(cfg.outbox), FrameStoreReader(cfg.store), Sources(endpoints), cfg.frame.size)
    url = address.url(sock.getsockname()[1]) + "/"
    log.info("start", url=url, outbox=cfg.outbox, store=cfg.store, receiver=endpoints.receiver,
             sender=endpoints.sender, link=endpoints.link, token=token is not None)
    print(f"satgw web: {url}" + ("?token=<the token in " + a.token_file + ">" if token else ""), flush=True)
    config = uvicorn.Config(create_app(state, token), log_config=None, access_log=False, lifespan="on",
                            server_header=False, timeout_graceful_shutdown=2, limit_concurrency=100,
                            h11_max_incomplete_event_size=16 * 1024)
    uvicorn.Server(config).run(sockets=[sock])
    log.info("stop")
    return 0
