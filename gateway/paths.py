"""Where the shipped configs and the embedded model bundle live.

The README installs satgw in editable mode from a checkout, so the top-level
``configs/`` folder sits beside the ``gateway`` package.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from gateway.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The project's ``configs/`` folder (link presets, daemon, model and training configs)."""
    d = _PACKAGE.parent / "configs"
    if not d.is_dir():
        raise ConfigError(f"configs folder not found at {d}; install satgw from a checkout (pip install -e .)")
    return d


def bundle_dir(name: str = "cadc-tiny") -> Path:
    """Folder of a model bundle shipped inside the package (``gateway/bundles/<name>``)."""
    return _PACKAGE / "bundles" / name


@lru_cache(maxsize=1)
def embedded_bundles() -> tuple[str | None, ...]:
    """Every model bundle shipped inside the package: None (the embedded cadc-tiny, as ``bundle: null`` says
    everywhere) first, then the other folders of ``gateway/bundles`` that hold a bundle, by name.

    Read once per process: the ground asks on every decode, and the installed package does not change."""
    root = _PACKAGE / "bundles"
    others = sorted(p.name for p in root.iterdir() if p.name != "cadc-tiny" and (p / "manifest.json").is_file())
    return (None, *(str(root / name) for name in others))
