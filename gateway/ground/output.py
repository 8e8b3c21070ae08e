"""What the ground station delivers: ``<id>.png`` and the ``<id>.json`` record beside it.

:func:`decode_message` does one :class:`DecodeJob`: decode with the codec the
bitstream header names, then write the PNG and then the JSON record through
the one atomic writer (:func:`gateway.codec.image_io.write_atomic`). File
names are deterministic, so redoing a job after a crash rewrites the same
two files: the outbox never holds a second copy of a message. A bitstream
claiming a picture above the job's ``max_pixels`` is refused from its header,
before any decoder is loaded. Failures of the host (the decoder does not
load, the outbox cannot be written) are raised as
:class:`~gateway.errors.HostError` so the message is kept and tried again. The record is
built from the frame store's typed :class:`~gateway.store.framestore.StoredMessage`,
never from storage column names.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.protocol.meta import MessageMeta
from gateway.store.framestore import StoredMessage


@dataclass(frozen=True)
class DecodeJob:
    """Everything needed to decode one message and describe it."""

    message: StoredMessage
    bitstream: bytes
    outbox: str
    frame_size: int
    bundle: str | None = None  # CADC model bundle folder (None: the embedded cadc-tiny)
    max_pixels: int = 64_000_000  # largest picture (original size) decoded; the header is checked first
    bundles: tuple[str | None, ...] = ()  # every CADC bundle at hand (the header's model id picks); () = (bundle,)
    device: str = "auto"  # where CADC decodes (auto, cpu, cuda[:n])
    precision: str = "auto"  # dtype of the pretrained parts on a GPU

    @property
    def message_id(self) -> int:
        return self.message.id


@dataclass(frozen=True)
class Timings:
    """When the message was accepted and arrived, and how long decoding took (wall-clock seconds).

    ``accepted_at`` is the sender's clock (from the META frame; None from an
    older sender); ``latency_s`` runs from it to ``decoded_at``, the
    end-to-end latency an operator sees.
    """

    first_frame_at: float
    assembled_at: float | None
    decoded_at: float
    transfer_s: float | None
    decode_s: float
    decode_stages_ms: dict[str, float] | None
    accepted_at: float | None = None
    latency_s: float | None = None


@dataclass(frozen=True)
class OutputRecord:
    """The ``<id>.json`` record of one delivered picture (field meanings in ``docs/daemons.md``)."""

    message_id: int
    source_name: str | None
    source_bytes: int | None
    codec: str
    setting: dict[str, Any]
    width: int
    height: int
    coded_size: list[int]
    bitstream_bytes: int
    frames_total: int
    frames_data: int
    frames_received: int
    frames_lost: int
    frames_repeated: int
    frame_size: int
    bytes_on_air: int
    bytes_received_on_air: int
    bpp: float
    bpp_on_air: float
    caption: str | None
    timings: Timings
    png: str
    #: How the sender chose the codec of a ``codec: auto`` job (None: the codec was asked for, or an older sender).
    codec_choice: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """The record as the JSON file's bytes."""
        return (json.dumps(asdict(self), indent=1, default=str) + "\n").encode()


def decode_message(job: DecodeJob) -> OutputRecord:
    """Decode ``job`` and write ``<outbox>/<id>.png`` then ``<id>.json``; returns the record.

    Raises :class:`gateway.errors.BitstreamError` (or another CodecError) for a
    bad bitstream and :class:`gateway.errors.HostError` when the decoder cannot be
    loaded or the outbox cannot be written; nothing is written then.
    """
    import numpy as np

    from gateway.codec import bitstream as bs
    from gateway.codec.base import Knobs
    from gateway.codec.image_io import png_bytes, write_atomic
    from gateway.codec.registry import decoder_for
    from gateway.errors import CodecError, HostError

    header, _ = bs.unpack(job.bitstream, max_pixels=job.max_pixels)
    try:
        # Loaded once per worker (not part of the decode time); the bundle is the one of the header's model id.
        codec = decoder_for(header, job.bundles or (job.bundle,), device=job.device, precision=job.precision)
    except Exception as e:  # whatever the model library raises, the host's decoder is broken, not the message
        raise HostError(f"cannot load the {header.codec_name} decoder: {type(e).__name__}: {e}") from e
    t0 = time.perf_counter()
    image, decode_info = codec.decode_with_info(job.bitstream)
    decode_s = time.perf_counter() - t0
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
        raise CodecError(f"decoder returned {type(image).__name__}, not an HxWx3 uint8 image")
    msg, meta = job.message, MessageMeta.unpack(job.message.meta)
    h, w = image.shape[:2]
    n, fs = msg.n, job.frame_size
    decoded_at = time.time()
    record = OutputRecord(
        message_id=msg.id,
        source_name=meta.name,
        source_bytes=meta.size,
        codec=header.codec_name,
        setting=codec.describe(Knobs(header.lam_code, header.delta_code, header.scale_code)),
        width=w,
        height=h,
        coded_size=list(header.coded_size),
        bitstream_bytes=len(job.bitstream),
        frames_total=n,
        frames_data=msg.k,
        frames_received=msg.received,
        frames_lost=max(0, n - msg.received),
        frames_repeated=msg.repeated,
        frame_size=fs,
        bytes_on_air=n * fs,
        bytes_received_on_air=(msg.received + msg.repeated) * fs,
        bpp=round(len(job.bitstream) * 8 / (w * h), 5),
        bpp_on_air=round(n * fs * 8 / (w * h), 5),
        caption=decode_info.get("caption"),
        timings=Timings(
            first_frame_at=msg.first_at,
            assembled_at=msg.assembled_at,
            decoded_at=decoded_at,
            transfer_s=None if msg.assembled_at is None else round(msg.assembled_at - msg.first_at, 4),
            decode_s=round(decode_s, 4),
            decode_stages_ms=decode_info.get("timings_ms"),
            accepted_at=meta.accepted_at,
            latency_s=None if meta.accepted_at is None else round(decoded_at - meta.accepted_at, 4),
        ),
        png=f"{msg.id}.png",
        codec_choice=None if meta.choice is None else meta.choice.record(header.codec_name),
    )
    out = Path(job.outbox)
    png = png_bytes(image)
    try:
        write_atomic(out / f"{msg.id}.png", png)
        write_atomic(out / f"{msg.id}.json", record.to_json())
    except OSError as e:
        raise HostError(f"cannot write the picture to the outbox {out}: {e.strerror or e}") from e
    return record


def add_source(outbox: str | Path, message_id: int, meta: bytes | None) -> bool:
    """Fill in ``source_name`` / ``source_bytes`` (and ``codec_choice``) of a written ``<id>.json`` from a late META.

    The picture was written after ``ack.meta_grace_s`` without its META frame; the sender still
    had it and sent it again. Returns whether the record changed (it is rewritten atomically).
    """
    from gateway.codec.image_io import write_atomic

    path = Path(outbox) / f"{message_id}.json"
    info = MessageMeta.unpack(meta)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    changed = False
    if record.get("source_name") is None and info.name is not None:
        record["source_name"], record["source_bytes"] = info.name, info.size
        changed = True
    if record.get("codec_choice") is None and info.choice is not None:
        record["codec_choice"] = info.choice.record(record.get("codec"))
        changed = True
    if not changed:
        return False
    write_atomic(path, (json.dumps(record, indent=1, default=str) + "\n").encode())
    return True
