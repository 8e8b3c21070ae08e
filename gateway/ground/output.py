"""What the ground station delivers: ``<id>.png`` and the ``<id>.json`` record beside it.

:func:`decode_message` does one :class:`DecodeJob`: decode with the codec the
bitstream header names, then write the PNG and then the JSON record through
the one atomic writer (:func:`gateway.codec.image_io.write_atomic`). File
names are deterministic, so the outbox never holds a second copy of a message.

Each picture written is a *revision* (1, 2, ...): previews of a message
whose frames stopped coming (a job with a :class:`PreviewSpec`: the data
frames 0..j-1, decoded with ``partial=True`` by a :attr:`~gateway.codec.base.Codec.progressive`
codec), then the complete picture, the last revision. The JSON is renamed
last, so the record on disk says which revision the outbox holds, and a job
first reads it (:func:`on_disk`): a preview never replaces an equal or
higher revision or a complete picture (it is :class:`PreviewSkipped`), and a
complete job whose picture is already on disk (the daemon was killed between
the rename and recording it) returns that record instead of writing it
again. So no revision is written twice, and none goes backwards. A bitstream
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
from typing import Any, Callable

from gateway.protocol.meta import MessageMeta
from gateway.store.framestore import StoredMessage


@dataclass(frozen=True)
class PreviewSpec:
    """A preview job: the bitstream is the message's first ``frames_used`` data frames.

    The picture is written only if the prefix holds more layers than
    ``min_layers`` (the last revision written): fewer would decode to the same picture.
    """

    frames_used: int
    min_layers: int = 0


@dataclass(frozen=True)
class DecodeJob:
    """Everything needed to decode one message (or a preview of it) and describe it."""

    message: StoredMessage
    bitstream: bytes
    outbox: str
    frame_size: int
    bundle: str | None = None  # CADC model bundle folder (None: the embedded cadc-tiny)
    max_pixels: int = 64_000_000  # largest picture (original size) decoded; the header is checked first
    bundles: tuple[str | None, ...] = ()  # every CADC bundle at hand (the header's model id picks); () = (bundle,)
    device: str = "auto"  # where CADC decodes (auto, cpu, cuda[:n])
    precision: str = "auto"  # dtype of the pretrained parts on a GPU
    revision: int = 1  # the revision this job writes (one above the last the frame store recorded)
    preview: PreviewSpec | None = None  # None: the complete bitstream

    @property
    def message_id(self) -> int:
        return self.message.id

    @property
    def is_preview(self) -> bool:
        """Whether this job decodes a prefix for a preview (not the complete picture)."""
        return self.preview is not None


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
    complete: bool = True  #: False for a preview
    revision: int = 1  #: 1, 2, ...: each picture written for the message; the complete one is the last
    frames_used: int = 0  #: data frames 0..frames_used-1 the picture was decoded from (frames_data when complete)
    layers_decoded: int | None = None  #: the codec's layers the picture had (None: a codec without layers)
    layers_total: int | None = None
    #: How the sender chose the codec of a ``codec: auto`` job (None: the codec was asked for, or an older sender).
    codec_choice: dict[str, Any] | None = None
    #: The CADC colour layer laid onto the picture (bytes, cells, steps; None: the stream had none).
    color_layer: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """The record as the JSON file's bytes."""
        return (json.dumps(asdict(self), indent=1, default=str) + "\n").encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OutputRecord":
        """The record a ``<id>.json`` holds (as :meth:`to_json` wrote it); KeyError/TypeError when it is not one."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["timings"] = Timings(**d["timings"])
        return cls(**fields)


@dataclass(frozen=True)
class OnDisk:
    """What the outbox's ``<id>.json`` says was written last for a message (revision 0: nothing)."""

    revision: int = 0
    complete: bool = False
    frames_used: int = 0
    layers: int | None = None
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class PreviewSkipped:
    """A preview job that wrote nothing, and why.

    ``reason``: ``superseded`` (the outbox already holds this revision or a
    later one, or the complete picture: ``on_disk`` says what), ``not_progressive``
    (the codec decodes only complete streams), ``no_picture_yet`` (the prefix
    lacks the first layer), ``no_new_layers`` (it would decode to the picture
    already written).
    """

    message_id: int
    reason: str
    layers: int = 0
    on_disk: OnDisk = OnDisk()


def on_disk(outbox: str | Path, message_id: int) -> OnDisk:
    """The revision ``<outbox>/<id>.json`` records (an absent or unreadable record reads as revision 0)."""
    try:
        d = json.loads((Path(outbox) / f"{message_id}.json").read_text())
    except (OSError, ValueError):
        return OnDisk()
    if not isinstance(d, dict) or d.get("message_id") != message_id:
        return OnDisk()
    rev = d.get("revision", 1)  # a record from before revisions is a complete picture, revision 1
    layers = d.get("layers_decoded")
    return OnDisk(rev if isinstance(rev, int) and rev > 0 else 1, d.get("complete", True) is not False,
                  int(d.get("frames_used") or d.get("frames_data") or 0), layers if isinstance(layers, int) else None, d)


def decode_message(job: DecodeJob, codec_for: Callable[..., Any] | None = None) -> OutputRecord | PreviewSkipped:
    """Decode ``job`` and write ``<outbox>/<id>.png`` then ``<id>.json``; returns the record.

    A preview job may return :class:`PreviewSkipped` instead (nothing
    written); a complete job whose picture the outbox already holds returns
    that record. ``codec_for(header, bundles, device=, precision=)`` finds the
    decoder (default :func:`gateway.codec.registry.decoder_for`; tests pass a stand-in).
    Raises :class:`gateway.errors.BitstreamError` (or another CodecError) for a
    bad bitstream and :class:`gateway.errors.HostError` when the decoder cannot be
    loaded or the outbox cannot be written; nothing is written then.
    """
    import numpy as np

    from gateway.codec import bitstream as bs
    from gateway.codec.base import Knobs
    from gateway.codec.image_io import png_bytes, write_atomic
    from gateway.errors import CodecError, HostError

    if codec_for is None:
        from gateway.codec.registry import decoder_for as codec_for
    header, _ = bs.unpack(job.bitstream, max_pixels=job.max_pixels)
    out, msg = Path(job.outbox), job.message
    disk = on_disk(out, msg.id)
    if disk.complete and disk.record is not None:
        if job.preview is not None:
            return PreviewSkipped(msg.id, "superseded", on_disk=disk)
        try:
            return OutputRecord.from_dict(disk.record)  # written before a crash: not a second time
        except (KeyError, TypeError):
            pass  # not a record this build can read: write the picture again, one revision up
    if job.preview is not None and disk.revision >= job.revision:
        return PreviewSkipped(msg.id, "superseded", on_disk=disk)
    try:
        # Loaded once per worker (not part of the decode time); the bundle is the one of the header's model id.
        codec = codec_for(header, job.bundles or (job.bundle,), device=job.device, precision=job.precision)
    except Exception as e:  # whatever the model library raises, the host's decoder is broken, not the message
        raise HostError(f"cannot load the {header.codec_name} decoder: {type(e).__name__}: {e}") from e
    if job.preview is not None:
        if not codec.progressive:
            return PreviewSkipped(msg.id, "not_progressive", on_disk=disk)
        layers, _total = codec.prefix_layers(job.bitstream)
        if layers == 0:
            return PreviewSkipped(msg.id, "no_picture_yet", on_disk=disk)
        if layers <= job.preview.min_layers:
            return PreviewSkipped(msg.id, "no_new_layers", layers, on_disk=disk)
    t0 = time.perf_counter()
    image, decode_info = codec.decode_with_info(job.bitstream, partial=job.preview is not None)
    decode_s = time.perf_counter() - t0
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
        raise CodecError(f"decoder returned {type(image).__name__}, not an HxWx3 uint8 image")
    meta = MessageMeta.unpack(msg.meta)
    h, w = image.shape[:2]
    n, fs = msg.n, job.frame_size
    decoded_at = time.time()
    layers_decoded, layers_total = decode_info.get("layers"), decode_info.get("layers_total")
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
        complete=job.preview is None,
        # One above what the outbox holds even if the frame store had not recorded it (a crash in between).
        revision=max(job.revision, disk.revision + 1),
        frames_used=msg.k if job.preview is None else job.preview.frames_used,
        layers_decoded=layers_decoded if isinstance(layers_decoded, int) else None,
        layers_total=layers_total if isinstance(layers_total, int) else None,
        codec_choice=None if meta.choice is None else meta.choice.record(header.codec_name),
        color_layer=decode_info.get("color_layer") if isinstance(decode_info.get("color_layer"), dict) else None,
    )
    png = png_bytes(image)
    try:
        write_atomic(out / f"{msg.id}.png", png)
        write_atomic(out / f"{msg.id}.json", record.to_json())  # last: the record says the revision is there
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
