"""The layout's dependency rules, checked by walking every import in the source (AST, nothing is imported).

Packages depend one way (shared/DESIGN.md, issue 12):

* ``packetizer`` imports neither ``gateway`` nor ``link_sim``;
* ``link_sim`` imports ``packetizer`` and, of the gateway, only ``gateway.transport`` and ``gateway.errors``;
* nothing in ``gateway`` imports ``link_sim`` except the code that starts the simulator (the launcher, the demo);
* no module imports the command line (``gateway.cli``) but the command line itself;
* the rooms of ``gateway`` depend on each other as the table below says, which has no cycles.

Lazy imports inside functions count the same as module-level ones.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "packetizer", "link_sim")

#: The code that starts the link simulator, allowed to import link_sim.
STARTS_THE_SIMULATOR = {"gateway.eval.launcher", "gateway.eval.demo"}

#: Which rooms of gateway each room may import (top-level modules errors/paths count as rooms).
ROOMS: dict[str, set[str]] = {
    "errors": set(),
    "paths": {"errors"},
    "transport": {"errors"},
    "protocol": set(),
    "codec": {"errors", "paths"},
    "ratecontrol": {"codec", "errors", "paths"},  # paths: the embedded model ladder beside the bundles
    "store": {"errors"},
    "daemon": {"transport", "protocol", "store", "errors"},
    "sender": {"daemon", "store", "protocol", "ratecontrol", "codec", "transport", "errors"},
    "ground": {"daemon", "store", "protocol", "codec", "transport", "errors", "paths"},
    "eval": {"codec", "ratecontrol", "transport", "errors", "paths"},
    # The ground station's live page: reads the store and the outbox, asks daemons through the transport.
    "web": {"daemon", "store", "protocol", "transport", "errors", "paths"},
    "training": {"codec", "eval", "errors"},
    "cli": {"sender", "ground", "eval", "codec", "ratecontrol", "transport", "daemon", "errors", "paths"},
    "bundles": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # "from gateway import errors"
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (names imported *from* a module are not modules: dropped)."""
    paths = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    return {m: {d for d in _imports(p) if d in paths} for m, p in paths.items()}


GRAPH = _graph()


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "gateway" and len(parts) > 1 else None


def _violations(pred) -> list[str]:
    return sorted(f"{m} imports {dep}" for m, deps in GRAPH.items() for dep in deps if pred(m, dep))


def test_the_walk_sees_the_whole_tree() -> None:
    assert {"packetizer.frame", "link_sim.daemon", "gateway.sender.daemon", "gateway.cli"} <= set(GRAPH)
    assert "gateway.transport.link_peer" in GRAPH["link_sim.daemon"]


def test_packetizer_imports_nothing_of_ours() -> None:
    assert _violations(lambda m, d: m.startswith("packetizer") and not d.startswith("packetizer")) == []


def test_link_sim_imports_only_packetizer_and_the_gateways_transport_and_errors() -> None:
    allowed = ("link_sim", "packetizer", "gateway.transport", "gateway.errors")

    def bad(m: str, d: str) -> bool:
        return m.startswith("link_sim") and d != "gateway" and not any(d == a or d.startswith(a + ".") for a in allowed)

    assert _violations(bad) == []


def test_only_the_code_that_starts_the_simulator_imports_link_sim() -> None:
    bad = lambda m, d: m.startswith("gateway") and d.startswith("link_sim") and m not in STARTS_THE_SIMULATOR  # noqa: E731
    assert _violations(bad) == []


def test_nothing_imports_the_command_line() -> None:
    bad = lambda m, d: (d == "gateway.cli" or d.startswith("gateway.cli.")) and not m.startswith("gateway.cli")  # noqa: E731
    assert _violations(bad) == []


def test_rooms_import_only_the_rooms_below_them() -> None:
    def bad(m: str, d: str) -> bool:
        src, dst = _room(m), _room(d)
        return src is not None and dst is not None and src != dst and dst not in ROOMS[src]

    assert set(_room(m) for m in GRAPH if _room(m)) <= set(ROOMS), "a new room needs a line in ROOMS"
    assert _violations(bad) == []


def test_the_room_table_has_no_cycles() -> None:
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done

    def visit(room: str, path: list[str]) -> None:
        if state[room] == 1:
            pytest.fail("rooms import each other in a cycle: " + " -> ".join([*path, room]))
        if state[room] == 0:
            state[room] = 1
            for dep in ROOMS[room]:
                visit(dep, [*path, room])
            state[room] = 2

    for room in ROOMS:
        visit(room, [])
