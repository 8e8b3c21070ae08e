"""Where the shipped link presets live, and preset names -> files.

The README installs satgw in editable mode from a checkout, so the top-level
``configs/links/`` folder sits beside the ``link_sim`` package.
"""

from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "links"
PRESETS = ("clean", "geo", "leo", "harsh")


def link_preset(name: str) -> Path:
    """Path of a link preset by name (``clean``, ``geo``, ``leo``, ``harsh``), or ``name`` itself if it is a file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PRESET_DIR / f"{name}.yaml"
