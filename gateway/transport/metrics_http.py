"""Prometheus metrics over HTTP for every daemon on the wire (sender, ground station, link simulator).

Each daemon keeps its metrics in its own :class:`prometheus_client.CollectorRegistry`
(several daemons may share a process in tests) and serves it with
:class:`MetricsServer`: prometheus_client's WSGI app on the standard library's
threaded WSGI server, the same pair ``prometheus_client.start_http_server``
uses, plus a bearer-token check and nothing but ``/metrics``. The server runs
in its own threads; a scrape never waits on a daemon's event loop.

Most of a daemon's numbers already live in its ``counters`` map (the one
``satgw status`` shows). Rather than count twice, a daemon's collector reads
that map when scraped, through :func:`counter_families`, so ``/metrics`` and
``status`` cannot disagree. Copying a dict of str -> int is one C call under
the GIL, so a scrape sees a consistent map even while the loop counts on;
:func:`snapshot` retries in the rare case a key is added mid-copy.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Iterator, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.errors import ConfigError
from gateway.transport.http_listen import MetricsSettings, bearer, read_token, token_matches

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class CounterSpec:
    """One entry of a daemon's ``counters`` map exported as (one label set of) a Prometheus counter."""

    key: str  #: the key in the daemon's counters map
    name: str  #: metric name, ``satgw_<daemon>_..._total``
    help: str
    labels: tuple[tuple[str, str], ...] = ()


def snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a map another thread is updating (retried if a key is added while copying)."""
    for _ in range(10):
        try:
            return dict(values)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


def counter_families(specs: Iterable[CounterSpec], values: Mapping[str, Any]) -> Iterator[Metric]:
    """Counter families for ``specs``, valued from ``values`` (a missing key reads 0: nothing happened yet)."""
    families: dict[str, CounterMetricFamily] = {}
    for spec in specs:
        fam = families.get(spec.name)
        if fam is None:
            fam = families[spec.name] = CounterMetricFamily(spec.name, spec.help,
                                                            labels=[k for k, _ in spec.labels])
        fam.add_metric([v for _, v in spec.labels], float(values.get(spec.key, 0) or 0))
    yield from families.values()


def gauge(name: str, help_: str, value: float | None, labels: Mapping[str, str] | None = None) -> GaugeMetricFamily:
    """A single-sample gauge family (NaN when ``value`` is None: unknown, not zero)."""
    fam = GaugeMetricFamily(name, help_, labels=list(labels or {}))
    fam.add_metric(list((labels or {}).values()), float("nan") if value is None else float(value))
    return fam


def labelled_gauge(name: str, help_: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """One gauge family with one sample per ``label`` value."""
    fam = GaugeMetricFamily(name, help_, labels=[label])
    for key, value in values.items():
        fam.add_metric([key], float(value))
    return fam


def only_metrics(app: WsgiApp, token: str | None) -> WsgiApp:
    """``app`` at ``/metrics`` only (404 elsewhere), behind ``Authorization: Bearer <token>`` when one is set."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"only GET and HEAD\n"]
        if token is not None and not token_matches(bearer(environ.get("HTTP_AUTHORIZATION")), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"a bearer token is required (Prometheus: authorization.credentials_file)\n"]
        return app(environ, start_response)

    return guarded


class _Handler(WSGIRequestHandler):
    """Request handling without the per-request line on stderr (the daemons log JSON there)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper never blocks the daemon's exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``/metrics`` of one registry, served from background threads until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, settings: MetricsSettings, what: str = "metrics.listen") -> None:
        assert settings.listen is not None
        addr = settings.listen
        token = read_token(settings.token_file, what.replace("listen", "token_file"))
        app = only_metrics(make_wsgi_app(registry), token)
        try:
            self._httpd = make_server(addr.host, addr.port, app,
                                      server_class=_Server6 if ":" in addr.host else _Server, handler_class=_Handler)
        except OSError as e:
            raise ConfigError(f"{what}: cannot listen on {addr.host}:{addr.port} ({e.strerror}); pick a free port "
                              "or another address") from None
        self.port: int = self._httpd.server_address[1]
        self.url = addr.url(self.port) + "/metrics"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(registry: CollectorRegistry, settings: MetricsSettings,
                  what: str = "metrics.listen") -> MetricsServer | None:
    """Start a :class:`MetricsServer` when ``settings.listen`` is set; None when metrics are off."""
    return None if settings.listen is None else MetricsServer(registry, settings, what)
