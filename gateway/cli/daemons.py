"""``satgw send``, ``satgw status`` and ``satgw keys``: the commands that talk to running daemons."""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

import zmq

from gateway.errors import DaemonError
from gateway.transport.curve import CurveKeys, generate_keypair, load_key
from gateway.transport.keyfile import ensure_key_file
from gateway.transport.lazy_pirate import ask

EXIT_REFUSED = 1  # the daemon answered no (the reason is printed)
EXIT_NO_REPLY = 3  # nobody answered: the request may or may not have been taken (satgw send says how to find out)
EXIT_USAGE = 2


def _ask(
    ctx: zmq.Context,
    endpoint: str,
    req: dict[str, Any],
    timeout: float,
    retries: int = 1,
    curve: CurveKeys | None = None,
) -> dict[str, Any] | str:
    """The daemon's reply, or why there is none (text)."""
    try:
        return ask(endpoint, req, timeout_s=timeout, retries=retries, ctx=ctx, curve=curve)
    except DaemonError as e:
        return str(e)


# --- satgw send ---------------------------------------------------------------------------------


def _read_image(path: Path, limit: int) -> bytes:
    """The file's bytes, refusing what is not a plain file or is above ``limit`` bytes (checked before reading)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a plain file")
    if st.st_size > limit:
        raise ValueError(f"{path} is {st.st_size} bytes, above the sender's limits.max_image_bytes = {limit}")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} grew above the sender's limits.max_image_bytes = {limit} while being read")
    return data


def send_main(argv: list[str]) -> int:
    """``satgw send IMAGE``: submit an image to the sender daemon; prints its message id once spooled.

    Every request carries a request id (``--request-id``, else a random one):
    the sender makes one job per id, so the retries here, or running the
    command again with the same ``--request-id`` after a lost reply, never
    make a second job. Exit status: 0 accepted (the id is printed), 1 refused
    (the reason is printed), 2 usage or an unreadable file, 3 no reply.
    """
    p = argparse.ArgumentParser(prog="satgw send", description="Submit an image to a running sender daemon.",
                                epilog="Exit status: 0 accepted, 1 refused (reason printed), 2 usage or unreadable "
                                       "file, 3 no reply (the request may have been taken: see the message).")
    p.add_argument("image", help="image file (any format Pillow reads)")
    p.add_argument("--packets", type=int, help="image budget in frames (default: the sender's)")
    p.add_argument("--priority", type=int, help="higher goes first (default: the sender's)")
    p.add_argument("--codec", help="webp, avif, jxl, jpeg, cadc, or auto: the best of the sender's auto.candidates "
                                   "for this image and budget (default: the sender's)")
    p.add_argument("--parity", type=int, help="erasure-coded parity frames within the budget")
    p.add_argument("--sender", default="tcp://127.0.0.1:5601", help="the sender's control endpoint")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each try")
    p.add_argument("--retries", type=int, default=3, help="tries before giving up")
    p.add_argument("--request-id", help="this request's id (default: a new random one); the sender makes at most "
                                        "one job per id, so repeating a command whose reply was lost is safe")
    a = p.parse_args(argv)
    rid = a.request_id or secrets.token_hex(16)
    if not 0 < len(rid) <= 64:
        print("satgw send: --request-id must be 1..64 characters", file=sys.stderr)
        return EXIT_USAGE
    path = Path(a.image)
    lost = (f"the image may have been accepted; to find out without sending it twice, run the same command "
            f"again with --request-id {rid}")
    ctx = zmq.Context()
    try:
        # Ask what the sender takes first: a request over its size limit is cut off by the socket unanswered.
        limits = _ask(ctx, a.sender, {"cmd": "limits"}, a.timeout, a.retries)
        if isinstance(limits, str):
            print(f"satgw send: {limits}; nothing was sent", file=sys.stderr)
            return EXIT_NO_REPLY
        try:
            data = _read_image(path, int(limits.get("max_image_bytes") or 2**31))
        except OSError as e:
            print(f"satgw send: cannot read {path}: {e.strerror}", file=sys.stderr)
            return EXIT_USAGE
        except ValueError as e:
            print(f"satgw send: refused: {e}", file=sys.stderr)
            return EXIT_REFUSED
        req: dict[str, Any] = {"cmd": "send", "name": path.name, "image": data, "request_id": rid}
        for key in ("packets", "priority", "codec", "parity"):
            if getattr(a, key) is not None:
                req[key] = getattr(a, key)
        reply = _ask(ctx, a.sender, req, a.timeout, a.retries)
    finally:
        ctx.destroy(linger=0)
    if isinstance(reply, str):
        print(f"satgw send: {reply}; {lost}", file=sys.stderr)
        return EXIT_NO_REPLY
    if not reply.get("ok"):
        print(f"satgw send: refused: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
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
    p.add_argument("--curve-dir", help="folder from 'satgw keys': reach a link that requires CURVE (uses the "
                                       "operator key pair, else the sender's)")
    p.add_argument("--json", action="store_true", help="print the raw replies as JSON instead of tables")
    a = p.parse_args(argv)
    try:
        link_curve = _operator_keys(a.curve_dir) if a.curve_dir else None
    except (OSError, ValueError) as e:
        print(f"satgw status: cannot load CURVE keys from {a.curve_dir} ({e}); run 'satgw keys {a.curve_dir}'",
              file=sys.stderr)
        return EXIT_USAGE
    ctx = zmq.Context()
    try:
        snd = _ask(ctx, a.sender, {"cmd": "status"}, a.timeout)
        rcv = _ask(ctx, a.receiver, {"cmd": "status"}, a.timeout)
        lnk = _ask(ctx, a.link, {"cmd": "stats"}, a.timeout, curve=link_curve)
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
                r["codec"] if r["codec"] != "auto" or not r.get("chosen_codec") else f"auto: {r['chosen_codec']}",
                str(r["source_name"])[:32],
                f"{r.get('acked', '-')}/{r.get('n') if r.get('n') is not None else '-'}",
                str(r.get("sent", 0)),
                str(r.get("retransmitted", 0)),
                (r.get("reason") or "")[:60],
            )
        con.print(m)
        _print_faults(con, "sender", snd)
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
        for r in rcv.get("retrying", []):
            con.print(f"  [yellow]retrying[/yellow] message {r['id']} in {r['retry_in_s']} s "
                      f"(failed {r['failures']} times): {r['reason']}")
        _print_previews(con, rcv)
        _print_faults(con, "ground station", rcv)
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


def _print_previews(con: Any, reply: dict[str, Any]) -> None:
    """The ground's previews: how many were written, and each message still arriving that has one on disk."""
    pv = reply.get("previews") or {}
    if not pv:
        return
    if pv.get("enabled") is False:
        con.print("  previews: off")
        return
    decoding = pv.get("decoding")
    con.print(f"  previews: {pv.get('written', 0)} written, {pv.get('queued', 0)} due"
              + (f", decoding one of message {decoding}" if decoding is not None else ""))
    for m in reply.get("messages", []):
        rev = m.get("revision")
        if m.get("state") == "receiving" and isinstance(rev, dict):
            layers = "" if rev.get("layers") is None else f", {rev['layers']} of {rev['layers_total']} layers"
            con.print(f"  [cyan]preview[/cyan] message {m['id']}: revision {rev['revision']} from "
                      f"{rev['frames_used']} of {rev['frames_data']} data frames{layers} "
                      f"({m.get('received')} of {m.get('n')} frames in now)")
    for r in pv.get("retrying", []):
        con.print(f"  [yellow]preview retry[/yellow] message {r['id']} in {r['retry_in_s']} s: {r['reason']}")


def _print_faults(con: Any, who: str, reply: dict[str, Any]) -> None:
    """One red line per resource fault a daemon reports (disk full, read-only, a file deleted under it)."""
    for resource, f in (reply.get("faults") or {}).items():
        con.print(f"  [red]{who}: {resource} failing[/red] ({f.get('failures')} times): {f.get('error')}")
    if reply.get("accepting") is False:
        con.print(f"  [red]{who} is not accepting jobs[/red]")


def _operator_keys(curve_dir: str) -> CurveKeys:
    """CURVE client keys for talking to the link: the operator pair from 'satgw keys', else the sender's."""
    d = Path(curve_dir)
    me = "operator" if (d / "operator.key_secret").exists() else "sender"
    return CurveKeys(load_key(d / f"{me}.key"), load_key(d / f"{me}.key_secret"),
                     server_public=load_key(d / "link.key"))


# --- satgw keys ---------------------------------------------------------------------------------


def keys_main(argv: list[str]) -> int:
    """``satgw keys DIR``: CURVE key pairs for the daemons and the operator, a link config snippet, the frame key."""
    p = argparse.ArgumentParser(prog="satgw keys", description="Make CURVE key pairs and the frame key for the "
                                                               "daemons.")
    p.add_argument("dir", help="folder to write sender/receiver/link/operator .key and .key_secret files and "
                               "frame.key into")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    a = p.parse_args(argv)
    d = Path(a.dir)
    names = ("sender", "receiver", "link", "operator")
    existing = [n for n in names if (d / f"{n}.key_secret").exists()]
    if existing and not a.force:
        print(f"satgw keys: {d} already holds keys for {', '.join(existing)}; pass --force to replace them", file=sys.stderr)
        return 1
    for name in names:
        pub, sec = generate_keypair(d, name)
        print(f"{name}: {pub} {sec}")
    if a.force:
        (d / "frame.key").unlink(missing_ok=True)
    ensure_key_file(d / "frame.key")
    print(f"frame key: {d / 'frame.key'} (frame.auth_key_file of both daemons, --auth-key of satgw link)")
    snippet = d / "link-curve.yaml"
    snippet.write_text(
        "# paste under a link preset (satgw link --config ...) to require these keys\n"
        "curve:\n"
        f"  public_key: {os.path.abspath(d / 'link.key')}\n"
        f"  secret_key: {os.path.abspath(d / 'link.key_secret')}\n"
        "  allowed_clients:\n"
        f"    - {os.path.abspath(d / 'sender.key')}\n"
        f"    - {os.path.abspath(d / 'receiver.key')}\n"
        f"    - {os.path.abspath(d / 'operator.key')}   # satgw status --curve-dir\n"
    )
    print(f"link config snippet: {snippet}; daemons: set curve.dir: {d}")
    return 0
