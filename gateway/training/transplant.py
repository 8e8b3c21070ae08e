"""Carry a trained model's tensors into a reshaped model of the same architecture (more channels somewhere).

The reshapes (:mod:`gateway.training.reshape_y`, :mod:`gateway.training.widen_vae`)
each say, per tensor whose shape changed, where the old entries go along the
grown dimensions; everything else is zero until the reshape fills its new
entries on purpose.  A tensor that keeps its shape is copied.
"""

from __future__ import annotations

from typing import Callable

import torch

from gateway.errors import ConfigError

#: Per grown tensor: dimension -> the index in the new tensor of each old entry along it.
Maps = dict[int, torch.Tensor]


def embed(old: torch.Tensor, shape: torch.Size, maps: Maps) -> torch.Tensor:
    """A zero tensor of ``shape`` holding ``old`` at the indices ``maps`` gives per dimension (identity elsewhere)."""
    out = torch.zeros(shape, dtype=old.dtype)
    index = [maps.get(d, torch.arange(old.shape[d])) for d in range(old.dim())]
    grids = torch.meshgrid(*index, indexing="ij")
    out[grids] = old
    return out


def transplant(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor],
               rule_for: Callable[[str], Callable[[torch.Tensor], Maps] | None], what: str) -> dict[str, torch.Tensor]:
    """Every tensor of ``new`` (names and shapes) filled from ``old``: copied where the shape is kept, embedded
    by ``rule_for(name)(old_tensor)`` where it grew.  ``what`` names the reshape in error messages."""
    out: dict[str, torch.Tensor] = {}
    for name, target in new.items():
        source = old.get(name)
        if source is None:
            raise ConfigError(f"the model to {what} has no tensor {name!r}: {what} only a bundle of the same architecture")
        if source.shape == target.shape:
            out[name] = source.clone()
            continue
        rule = rule_for(name)
        if rule is None:
            raise ConfigError(f"no rule to {what} {name} ({tuple(source.shape)} -> {tuple(target.shape)})")
        maps = rule(source)
        fits = all(int(maps[d].max()) < target.shape[d] if d in maps else source.shape[d] == target.shape[d]
                   for d in range(source.dim()))
        if not fits:
            raise ConfigError(f"the rule to {what} {name} does not fit ({tuple(source.shape)} -> {tuple(target.shape)})")
        out[name] = embed(source, target.shape, maps)
    return out
