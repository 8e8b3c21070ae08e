"""The page's one document: everything it shows, rebuilt in the background, versioned for live updates.

:class:`PageState` refreshes every :data:`REFRESH_S` seconds on its own thread
(outbox records, frame store, the daemons that answer) and keeps the
document as JSON bytes with a version number that goes up only when the
content changed; ``/api/state`` serves it and ``/api/events`` pushes each new
version to the browser.

Each picture is its outbox record as written, plus ``retransmissions`` (the
sender's count, when the sender answers or once answered; else null),
``setting_text``, the URLs of its full image and thumbnail (with the
revision in the query, so a browser fetches each new revision), and
``revisions``: every revision the ground wrote of it, oldest first (previews
decoded from the first frames, then the complete picture; the record itself
is the latest, ``complete: false`` while it is a preview).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from gateway.protocol.meta import MessageMeta
from gateway.store.framestore_reader import FrameStoreReader, MessageSummary
from gateway.web.live import LinkPanel, Sources
from gateway.web.outbox import OutboxView

REFRESH_S = 0.5  #: outbox and frame store are looked at this often
LIVE_EVERY = 2  #: the daemons are asked every this many refreshes
MAX_IMAGES = 200  #: pictures on the page (newest); older ones stay in the outbox
MAX_LISTED = 50  #: arriving, failed and queued messages listed
SENDER_ACTIVE = ("accepted", "encoded", "in_flight", "held")
#: The sender's queue as listed: on the air first, then held (the ground has every frame and is writing the
#: picture), then what waits.
QUEUE_ORDER = ("in_flight", "held", "encoded", "accepted")


def setting_text(codec: str | None, setting: dict[str, Any] | None) -> str:
    """A codec setting for people: ``λ 0.0123 · Δ 0.5`` (CADC) or ``quality 42``, plus the downscale if any."""
    s = setting or {}
    parts = []
    if "lam" in s:
        parts.append(f"λ {s['lam']:.3g}")
    if "delta" in s:
        parts.append(f"Δ {s['delta']:.3g}")
    if "quality" in s and "lam" not in s:
        parts.append(f"quality {s['quality']}")
    scale = s.get("scale")
    if scale is None and s.get("scale_code"):
        scale = 2.0 ** (-s["scale_code"] / 8.0)
    if scale is not None and scale < 1:
        parts.append(f"scale {scale:.2f}")
    return " · ".join(parts) or "default"


def _message(m: MessageSummary) -> dict[str, Any]:
    meta = MessageMeta.unpack(m.meta)
    return {"id": m.id, "state": m.state, "name": meta.name, "codec": meta.codec, "k": m.k, "n": m.n,
            "received": m.received, "repeated": m.repeated, "first_at": m.first_at, "last_at": m.last_at,
            "done_at": m.done_at, "reason": m.reason}


class PageState:
    """The page's document, refreshed on a background thread until :meth:`close`."""

    def __init__(self, outbox: OutboxView, store: FrameStoreReader, sources: Sources, frame_size: int = 450) -> None:
        self.outbox, self.store, self.sources = outbox, store, sources
        self.link_panel = LinkPanel(frame_size)
        self.version = 0
        self.body = b"{}"
        self._content: Any = None
        self._retx: dict[int, int] = {}  # message id -> sender's retransmissions, remembered once seen
        self._live: dict[str, Any] = {}
        self._turn = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Build the first document now, then keep it fresh in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="page-state", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop refreshing and close the daemon sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sources.close()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.refresh()
            except Exception as e:  # a bad file or reply must not stop the page: show it, retry next turn
                self._live["error"] = f"{type(e).__name__}: {e}"

    def snapshot(self) -> tuple[int, bytes]:
        """(version, JSON bytes) of the current document."""
        with self._lock:
            return self.version, self.body

    def refresh(self) -> None:
        """Rebuild the document; bump the version if anything changed."""
        if self._turn % LIVE_EVERY == 0:
            self._poll_live()
        self._turn += 1
        images = []
        records = self.outbox.records(MAX_IMAGES)
        history = self.store.revisions([r["message_id"] for r in records])
        for rec in records:
            mid = rec["message_id"]
            rev = f"?r={int(rec.get('revision') or 1)}"
            images.append({**rec, "retransmissions": self._retx.get(mid),
                           "setting_text": setting_text(rec.get("codec"), rec.get("setting")),
                           "full_url": f"/images/{mid}.png{rev}", "thumb_url": f"/images/{mid}/thumb.png{rev}",
                           "revisions": [r.as_dict() for r in history.get(mid, [])]})
        content = {
            "images": images,
            "arriving": [_message(m) for m in self.store.in_progress(MAX_LISTED)],
            "failed": [_message(m) for m in self.store.failed(MAX_LISTED)],
            "ground": {"counts": self.store.counts(), **self._live.get("ground", {})},
            "link": self._live.get("link", {}),
            "sender": self._live.get("sender", {"reachable": False, "asked": False}),
        }
        if content != self._content:
            body = json.dumps({**content, "version": self.version + 1, "generated_at": time.time()},
                              separators=(",", ":"), default=str).encode()
            with self._lock:
                self._content, self.version, self.body = content, self.version + 1, body

    def _poll_live(self) -> None:
        replies = self.sources.poll()
        ground, sender = replies.get("receiver"), replies.get("sender")
        ep = self.sources.endpoints
        self._live["ground"] = {
            "reachable": ground is not None, "asked": ep.receiver is not None,
            "counters": (ground or {}).get("counters", {}), "decoding": (ground or {}).get("decoding"),
            "faults": (ground or {}).get("faults", {}), "retrying": (ground or {}).get("retrying", []),
            "previews": (ground or {}).get("previews", {}),
        }
        self._live["link"] = self.link_panel.update(replies)
        if sender is None:
            self._live["sender"] = {"reachable": False, "asked": ep.sender is not None,
                                    "error": self.sources.errors.get("sender")}
            return
        queue = []
        for m in sender.get("messages", []):
            if m.get("retransmitted") is not None and m.get("state") == "delivered":
                self._retx[int(m["id"])] = int(m["retransmitted"])
            if m.get("state") in SENDER_ACTIVE:
                queue.append({k: m.get(k) for k in ("id", "state", "priority", "codec", "source_name", "n", "acked",
                                                    "sent", "retransmitted")})
        # What is on the air first, then what waits: the order the sender works in.
        queue.sort(key=lambda m: (QUEUE_ORDER.index(m["state"]), -(m["priority"] or 0), m["id"]))
        self._live["sender"] = {"reachable": True, "asked": True, "counts": sender.get("counts", {}),
                                "queue": queue[:MAX_LISTED], "rto_s": sender.get("rto_s"),
                                "faults": sender.get("faults", {})}
