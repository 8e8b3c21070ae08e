"""``satgw send``, ``satgw status`` and ``satgw keys``: the commands that talk to running daemons."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import zmq

from gateway.errors import DaemonError
from gateway.transport.curve import generate_keypair
from gateway.transport.lazy_pirate import ask


def _ask(ctx: zmq.Context, endpoint: str, req: dict[str, Any], timeout: float, retries: int = 1) -> dict[str, Any] | str:
    """The daemon's reply, or why there is none (text)."""
    try:
        return ask(endpoint, req, timeout_s=timeout, retries=retries, ctx=ctx)
    except DaemonError as e:
        return str(e)


# --- satgw send ---------------------------------------------------------------------------------


def send_main(argv: list[str]) -> int:
    """``satgw send IMAGE``: submit an image to the sender daemon; prints its message id once spooled."""
    p = argparse.ArgumentParser(prog="satgw send", description="Submit an image to a running sender daemon.")
    p.add_argument("image", help="image file (any format Pillow reads)")
    p.add_argument("--packets", type=int, help="image budget in frames (default: the sender's)")
    p.add_argument("--priority", type=int, help="higher goes first (default: the sender's)")
    p.add_argument("--codec", help="webp, avif, jxl, jpeg or cadc (default: the sender's)")
    p.add_argument("--parity", type=int, help="erasure-coded parity frames within the budget")
    p.add_argument("--sender", default="tcp://127.0.0.1:5601", help="the sender's control endpoint")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each try")
    p.add_argument("--retries", type=int, default=3, help="tries before giving up")
    a = p.parse_args(argv)
    path = Path(a.image)
    try:
        data = path.read_bytes()
    except OSError as e:
        print(f"satgw send: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    req: dict[str, Any] = {"cmd": "send", "name": path.name, "image": data}
    for key in ("packets", "priority", "codec", "parity"):
        if getattr(a, key) is not None:
            req[key] = getattr(a, key)
    ctx = zmq.Context()
    try:
        reply = _ask(ctx, a.sender, req, a.timeout, a.retries)
    finally:
        ctx.destroy(linger=0)
    if isinstance(reply, str):
        print(f"satgw send: {reply}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"satgw send: refused: {reply.get('error')}", file=sys.stderr)
        return 1
    print(reply["id"])
    return 0


# --- satgw status -------------------------------------------------------------------------------


def _counts_table(title: str, counts: dict[str, int]) -> Any:
    """One row: how many messages are in each state."""
    from rich.table import Table

    t = Table(title=title)
    for state in counts:
        t.add_column(state, justify="right")
    t.add_row(*(str(v) for v in counts.values()))
    return t


def status_main(argv: list[str]) -> int:
    """``satgw status``: queue by state, per-message progress and link counters, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(prog="satgw status", description="Show the state of the daemons.")
    p.add_argument("--sender", default="tcp://127.0.0.1:5601", help="the sender's control endpoint")
    p.add_argument("--receiver", default="tcp://127.0.0.1:5602", help="the ground station's control endpoint")
    p.add_argument("--link", default="tcp://127.0.0.1:5553", help="the link's control endpoint")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="print the raw replies as JSON instead of tables")
    a = p.parse_args(argv)
    ctx = zmq.Context()
    try:
        snd = _ask(ctx, a.sender, {"cmd": "status"}, a.timeout)
        rcv = _ask(ctx, a.receiver, {"cmd": "status"}, a.timeout)
        lnk = _ask(ctx, a.link, {"cmd": "stats"}, a.timeout)
    finally:
        ctx.destroy(linger=0)
    if a.json:
        import json

        print(json.dumps({"sender": snd, "receiver": rcv, "link": lnk}, default=repr, indent=1))
        return 0
    con = Console()
    ok = True
    if isinstance(snd, str):
        con.print(f"[red]sender[/red] {a.sender}: {snd}")
        ok = False
    else:
        con.print(_counts_table(f"sender queue ({a.sender})", snd.get("counts", {})))
        c = snd.get("counters", {})
        con.print(
            "  frames sent {fs}, retransmissions {rt}, ACK frames {ak}, bad frames {bad}, link up: {up}, "
            "RTO {rto:.3f} s, SRTT {srtt}".format(
                fs=c.get("frames_sent"),
                rt=c.get("retransmissions"),
                ak=c.get("ack_frames"),
                bad=c.get("bad_frames"),
                up=snd.get("link", {}).get("up"),
                rto=snd.get("rto_s", 0.0),
                srtt=snd.get("srtt_s"),
            )
        )
        m = Table(title="messages (sender)")
        for col in ("id", "state", "prio", "codec", "source", "acked/total", "sent", "retx", "reason"):
            m.add_column(col)
        for r in snd.get("messages", []):
            m.add_row(
                str(r["id"]),
                r["state"],
                str(r["priority"]),
                r["codec"],
                str(r["source_name"])[:32],
                f"{r.get('acked', '-')}/{r.get('n') if r.get('n') is not None else '-'}",
                str(r.get("sent", 0)),
                str(r.get("retransmitted", 0)),
                (r.get("reason") or "")[:60],
            )
        con.print(m)
    if isinstance(rcv, str):
        con.print(f"[red]ground station[/red] {a.receiver}: {rcv}")
        ok = False
    else:
        con.print(_counts_table(f"ground station ({a.receiver})", rcv.get("counts", {})))
        ct = Table(title="ground frame counters")
        ct.add_column("counter")
        ct.add_column("value", justify="right")
        for k, v in sorted(rcv.get("counters", {}).items()):
            ct.add_row(k, str(v))
        con.print(ct)
    if isinstance(lnk, str):
        con.print(f"[red]link[/red] {a.link}: {lnk}")
        ok = False
    else:
        lt = Table(title=f"link ({a.link}), up: {lnk.get('up')}")
        lt.add_column("counter")
        lt.add_column("forward", justify="right")
        lt.add_column("return", justify="right")
        fwd, ret = lnk.get("forward", {}) or {}, lnk.get("return", {}) or {}
        for k in fwd:
            if k == "dropped":
                continue
            lt.add_row(k, str(fwd.get(k)), str(ret.get(k)))
        for cause in sorted(set(fwd.get("dropped", {})) | set(ret.get("dropped", {}))):
            lt.add_row(f"dropped: {cause}", str(fwd.get("dropped", {}).get(cause, 0)), str(ret.get("dropped", {}).get(cause, 0)))
        con.print(lt)
    return 0 if ok else 1


# --- satgw keys ---------------------------------------------------------------------------------


def keys_main(argv: list[str]) -> int:
    """``satgw keys DIR``: CURVE key pairs for sender, receiver and link, plus a matching link config snippet."""
    p = argparse.ArgumentParser(prog="satgw keys", description="Make CURVE key pairs for the daemons.")
    p.add_argument("dir", help="folder to write sender/receiver/link .key and .key_secret files into")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    a = p.parse_args(argv)
    d = Path(a.dir)
    existing = [n for n in ("sender", "receiver", "link") if (d / f"{n}.key_secret").exists()]
    if existing and not a.force:
        print(f"satgw keys: {d} already holds keys for {', '.join(existing)}; pass --force to replace them", file=sys.stderr)
        return 1
    for name in ("sender", "receiver", "link"):
        pub, sec = generate_keypair(d, name)
        print(f"{name}: {pub} {sec}")
    snippet = d / "link-curve.yaml"
    snippet.write_text(
        "# paste under a link preset (satgw link --config ...) to require these keys\n"
        "curve:\n"
        f"  public_key: {os.path.abspath(d / 'link.key')}\n"
        f"  secret_key: {os.path.abspath(d / 'link.key_secret')}\n"
        "  allowed_clients:\n"
        f"    - {os.path.abspath(d / 'sender.key')}\n"
        f"    - {os.path.abspath(d / 'receiver.key')}\n"
    )
    print(f"link config snippet: {snippet}; daemons: set curve.dir: {d}")
    return 0
