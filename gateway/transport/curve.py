"""CURVE key material: key pairs on disk (``satgw keys``), and the keys a daemon uses as a client of the link.

Servers (the link's binds) use their secret key and accept only clients whose
public key is in ``allowed_clients`` (ZAP authentication, see
:func:`gateway.transport.sockets.make_socket`); clients need the server's
public key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from gateway.errors import ConfigError


@dataclass(frozen=True)
class CurveKeys:
    """CURVE key material of one endpoint (Z85 text keys as bytes).

    ``server_public`` is set on clients (the key of the server they connect to);
    ``allowed_clients`` on servers (the client public keys they accept; empty
    means any client that knows the server key).
    """

    public: bytes
    secret: bytes
    server_public: bytes | None = None
    allowed_clients: tuple[bytes, ...] = field(default_factory=tuple)


def generate_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` into ``directory``.

    Returns (public_path, secret_path). The secret file is created mode 0600.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = d / f"{name}.key", d / f"{name}.key_secret"
    pub_path.write_bytes(public + b"\n")
    fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return pub_path, sec_path


def load_key(path: str | os.PathLike) -> bytes:
    """Read one Z85 key (40 characters) from a key file written by :func:`generate_keypair`."""
    raw = Path(path).read_bytes().strip()
    if len(raw) != 40:
        raise ValueError(f"{path}: expected a 40-character Z85 CURVE key, found {len(raw)} bytes")
    return raw


def curve_client_keys(curve_dir: str | None, me: str) -> CurveKeys | None:
    """CURVE keys of ``me`` (sender or receiver) as a client of the link, from a ``satgw keys`` folder."""
    if curve_dir is None:
        return None
    d = Path(curve_dir)
    try:
        return CurveKeys(
            public=load_key(d / f"{me}.key"),
            secret=load_key(d / f"{me}.key_secret"),
            server_public=load_key(d / "link.key"),
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"key 'curve.dir': cannot load CURVE keys from {d} ({e}); run 'satgw keys {d}'") from e
