"""The pre-shared frame key: one file of random bytes that the sender, the ground station and the link share.

It authenticates every frame (a truncated HMAC-SHA256 tag, docs/frames.md)
and the link's hello messages (:mod:`gateway.transport.hello`). ``satgw keys
DIR`` writes one (``DIR/frame.key``); the sample configs name
``var/keys/frame.key`` with ``create_key: true``, so whichever process starts
first generates it and the others read the same file. Creation is atomic
(written aside, then linked into place), so two processes starting together
end up with one key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gateway.errors import ConfigError

MIN_KEY_BYTES = 16
KEY_BYTES = 32


def ensure_key_file(path: str | os.PathLike) -> bool:
    """Create ``path`` with a new random key (hex text, mode 0600) unless it exists; True if it was created."""
    p = Path(path)
    if p.exists():
        return False
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(KEY_BYTES).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, p)  # fails if another process created it meanwhile: then theirs is the key
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def load_frame_key(path: str | os.PathLike, create: bool = False) -> bytes:
    """The key in ``path`` (surrounding whitespace stripped); generate the file first with ``create``."""
    p = Path(path)
    try:
        if create:
            ensure_key_file(p)
        key = p.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the frame key {p} ({e.strerror or e}); create it with 'satgw keys DIR' "
                          "or fix the path") from e
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{p} holds {len(key)} bytes; a frame key needs at least {MIN_KEY_BYTES} random bytes")
    return key
