"""The ``satgw`` command: one console script, one subcommand per job.

Each subcommand lives in the module that does its job and exposes
``main(argv) -> int``; this file only dispatches, importing lazily so that
``satgw link`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sender": ("gateway.sender.main:main", "run the sender daemon (spool, encoder, transmit scheduler)"),
    "receiver": ("gateway.ground.main:main", "run the ground-station daemon (frame store, reassembly, decode)"),
    "link": ("link_sim.daemon:main", "run the link simulator daemon between sender and ground station"),
    "send": ("gateway.cli.daemons:send_main", "submit an image to a running sender; prints its message id"),
    "status": ("gateway.cli.daemons:status_main", "print queue, per-message progress and link counters"),
    "keys": ("gateway.cli.daemons:keys_main", "make CURVE key pairs for the daemons"),
    "encode": ("gateway.cli.images:encode_main", "encode an image into a packet budget (rate controlled)"),
    "decode": ("gateway.cli.images:decode_main", "decode a bitstream file to PNG"),
    "bundle": ("gateway.codec.cadc.bundle_cli:main", "inspect model bundles (satgw bundle check PATH)"),
    "web": ("gateway.web.main:main", "serve the ground station's live web page (pictures, link, queue)"),
    "demo": ("gateway.eval.demo:main", "run the whole chain on sample photos and write demo-out/"),
}


def _usage() -> str:
    lines = ["usage: satgw COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'satgw COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``satgw`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from gateway import __version__

        print(f"satgw {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"satgw: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(rest)
    return int(result or 0)

