"""Atomic, resumable training checkpoints.

A checkpoint holds everything a run needs to continue as if never stopped:
weights, optimizer(s), LR scheduler(s), step and stage, the python / numpy /
torch RNG states and the data sampler's state.  Files are written to a temp
name in the same folder, fsynced and renamed, so a kill at any moment leaves
either the old or the new checkpoint, never a torn one.

Retention: the newest ``keep`` checkpoints, plus (``keep_best``) the one
with the lowest validation score of its stage, recorded in
``checkpoints.json`` beside them (:func:`best_checkpoint`).  A full-size
model's checkpoint is several GB, so the default keeps three files at most.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
INDEX = "checkpoints.json"


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """Name of the checkpoint for ``step``."""
    return Path(folder) / f"ckpt-{step:08d}.pt"


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep: int = 2,
                    score: float | None = None, keep_best: bool = True) -> Path:
    """Write ``state`` (plus RNG states) atomically as the checkpoint of ``step``; prune to the newest ``keep``.

    ``score`` (lower is better; the validation loss measured at this step)
    makes this the best checkpoint when it beats the best one of the same
    stage (``state["stage_index"]``); with ``keep_best`` that one is kept
    beyond the newest ``keep``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = dict(state, step=step, rng=rng_state())
    final = checkpoint_path(folder, step)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    best = _read_index(folder).get("best")
    stage = state.get("stage_index")
    if score is not None and (best is None or best.get("stage") != stage or score < float(best["score"])):
        best = {"step": step, "score": float(score), "stage": stage}
        _write_index(folder, {"best": best})
    kept_best = checkpoint_path(folder, int(best["step"])) if best and keep_best else None
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        if old != kept_best:
            old.unlink(missing_ok=True)
    return final


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_index(folder: Path, data: dict[str, Any]) -> None:
    tmp = folder / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(folder / INDEX)


def best_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the best validation score of its stage (see :func:`save_checkpoint`), if still there."""
    best = _read_index(Path(folder)).get("best")
    if not best:
        return None
    path = checkpoint_path(folder, int(best["step"]))
    return path if path.is_file() else None


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint in ``folder``, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint (and by default restore the global RNG states it saved)."""
    # weights_only=False: the payload holds python/numpy RNG tuples, written by this project only.
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    if restore_rng:
        restore_rng_state(state["rng"])
    return state


def warm_start(
    model: torch.nn.Module, source: torch.nn.Module | dict[str, torch.Tensor], prefixes: list[str] | None = None
) -> dict[str, list[str]]:
    """Copy ``source``'s tensors (a module or a state dict) into ``model`` where names and shapes agree.

    Lets a run start from a bundle whose architecture differs in some parts
    (a new VAE, say): the parts that still fit keep their trained weights, the
    rest keep their fresh initialisation.  ``prefixes`` limits the copy to
    parameter names starting with one of them.  Returns the names ``copied``,
    ``reshaped`` (same name, other shape: skipped) and ``missing`` (not in the
    source: skipped).
    """
    src = source if isinstance(source, dict) else source.state_dict()
    own = model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "reshaped": [], "missing": []}
    update = {}
    for name, tensor in own.items():
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        if name not in src:
            report["missing"].append(name)
        elif src[name].shape != tensor.shape:
            report["reshaped"].append(name)
        else:
            update[name] = src[name]
            report["copied"].append(name)
    model.load_state_dict(update, strict=False)
    return report
