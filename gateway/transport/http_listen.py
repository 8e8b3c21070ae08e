"""Where an HTTP endpoint of ours listens, and who may use it: the rules both the metrics and the web page follow.

A listen address is ``host:port`` (``127.0.0.1:9101``, ``localhost:8080``,
``[::1]:9101``). Loopback is the default everywhere; an address another host
can reach (``0.0.0.0``, a LAN address, a host name) is allowed only with a
bearer token read from a file, because what these endpoints show (picture
names, queue contents, link state) is operational data. The check is made
when the config is read, so a daemon never starts half-exposed.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from gateway.transport.config_reader import Section

MIN_TOKEN_CHARS = 16  #: a shorter token is guessable: refuse it


@dataclass(frozen=True)
class ListenAddress:
    """A parsed ``host:port``; ``port`` 0 lets the OS pick one."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this host can connect."""
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        """``http://host:port`` for people (IPv6 in brackets), with the bound ``port`` if given."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}"


@dataclass(frozen=True)
class MetricsSettings:
    """``metrics:`` of a daemon's config: where ``/metrics`` is served (None: off) and its token file."""

    listen: ListenAddress | None = None
    token_file: str | None = None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses; any other name or address can be reached from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> ListenAddress:
    """``host:port`` -> :class:`ListenAddress`; ValueError says what is wrong with ``text``."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"must be host:port such as 127.0.0.1:9101, got {text!r}")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets, e.g. [::1]:9101, got {text!r}")
    if not host:
        raise ValueError(f"needs a host (127.0.0.1 for this machine only, 0.0.0.0 for every interface), got {text!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {port_text!r}")
    return ListenAddress(host, int(port_text))


def check_exposure(address: ListenAddress, token_file: str | None, what: str) -> None:
    """Refuse a non-loopback ``address`` without a token file (ConfigError naming ``what`` and the fix)."""
    if not address.loopback and not token_file:
        raise ConfigError(
            f"{what}: {address.host} can be reached from other hosts; give a token file (at least "
            f"{MIN_TOKEN_CHARS} random characters) to serve there, or listen on 127.0.0.1"
        )


def read_token(path: str | None, what: str) -> str | None:
    """The bearer token in ``path`` (surrounding whitespace stripped), or None without a path."""
    if path is None:
        return None
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: cannot read token file {p} ({e}); create it or fix the path") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"{what}: {p} must hold one token of at least {MIN_TOKEN_CHARS} characters, no spaces "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))' > FILE)")
    return token


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison, so response times do not leak how much of a guess was right."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def read_metrics_section(s: Section) -> MetricsSettings:
    """Read a ``metrics:`` section (``listen``, ``token_file``) with the loopback rule applied."""
    raw = s.raw("listen")
    listen = None
    if raw is not None:
        try:
            listen = parse_listen(raw)
        except ValueError as e:
            s.fail(s.key_path("listen"), str(e))
    token_file = s.path_value("token_file", None, "a file holding the bearer token Prometheus sends")
    s.done()
    if listen is not None:
        try:
            check_exposure(listen, token_file, s.key_path("listen"))
        except ConfigError as e:
            s.fail(s.key_path("listen"), str(e).split(": ", 1)[1] + f"; set {s.key_path('token_file')}")
    return MetricsSettings(listen, token_file)
