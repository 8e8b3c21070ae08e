"""Which jobs the sender takes: one check of a ``satgw send`` request or an inbox file, before it is spooled.

A job is an image and its options (codec, budget in frames, priority,
parity); what is not given comes from the config's ``defaults``. Anything
wrong raises :class:`gateway.errors.RequestError` with the reason, which goes
back to whoever asked: the image is checked here, its size from the header
before any pixel is decoded, then decoded once, so a text file, a truncated
photo or a decompression bomb is refused at ``satgw send`` instead of
becoming a job that fails later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from gateway.codec.image_io import probe_image
from gateway.daemon.config import SenderDefaults, SenderLimits
from gateway.errors import RequestError

#: Request keys that are job options.
OPTIONS = ("codec", "packets", "priority", "parity")
_RANGES = {"packets": (1, 65535), "priority": (-1000, 1000), "parity": (0, 255)}


@dataclass(frozen=True)
class Job:
    """A checked job, ready for the spool."""

    image: bytes
    name: str
    codec: str
    packets: int
    priority: int
    parity: int


def check_job(
    image: bytes,
    name: str,
    options: Mapping[str, Any],
    defaults: SenderDefaults,
    limits: SenderLimits,
    codecs: list[str],
) -> Job:
    """The job for ``image`` with ``options`` laid over ``defaults``; RequestError says what is wrong."""
    if not image:
        raise RequestError("the image is empty")
    if len(image) > limits.max_image_bytes:
        raise RequestError(f"the image is {len(image)} bytes, above limits.max_image_bytes = {limits.max_image_bytes}")
    codec = options.get("codec") or defaults.codec
    if codec not in codecs:
        raise RequestError(f"unknown codec {codec!r}; use one of {', '.join(codecs)}")
    values = {key: options.get(key, getattr(defaults, key)) for key in _RANGES}
    for key, (lo, hi) in _RANGES.items():
        v = values[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise RequestError(f"{key} = {v!r} is invalid: use an integer in {lo}..{hi}")
    if values["parity"] >= values["packets"]:
        raise RequestError(
            f"parity = {values['parity']} leaves no data frames in a budget of {values['packets']} packets"
        )
    probe_image(image, limits.max_pixels)
    return Job(image, name, codec, values["packets"], values["priority"], values["parity"])
