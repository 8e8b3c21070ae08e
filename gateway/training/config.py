"""The training recipe: a YAML file read into typed dataclasses.

A recipe lists stages run one after the other (``vae`` = stage 0 autoencoder
pre-training, ``codec`` = paper stages 1 and 2); each stage says how many
steps, the learning rate, which parameters train (name prefixes) and the
weights of the loss terms.  Unknown keys are errors, so a typo never silently
trains the wrong thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from gateway.errors import ConfigError
from gateway.training.losses import LossWeights

STAGE_KINDS = ("vae", "codec")
RATE_ESTIMATES = ("noise", "rounded")


def _take(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return dict(d)


def apply_overrides(data: dict, overrides: list[str], flag: str = "--set") -> dict:
    """``data`` with each ``a.b=value`` applied (value parsed as YAML); a numeric part indexes a list
    (``stages.0.steps=3600``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. codec.ugaq=false")
        *path, leaf = key.split(".")
        node: Any = data
        for part in path:
            if isinstance(node, list):
                node = node[_list_index(node, part, item, flag)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"{flag} {item!r}: {part!r} is not a section")
        if isinstance(node, list):
            node[_list_index(node, leaf, item, flag)] = yaml.safe_load(raw)
        elif isinstance(node, dict):
            node[leaf] = yaml.safe_load(raw)
        else:
            raise ConfigError(f"{flag} {item!r}: {path[-1]!r} is not a section")
    return data


def _list_index(node: list, part: str, item: str, flag: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{flag} {item!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


@dataclass
class StageConfig:
    """One training stage."""

    name: str
    kind: str
    steps: int
    lr: float = 1e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    trainable: list[str] = field(default_factory=list)  # name prefixes; empty = every parameter
    frozen: list[str] = field(default_factory=list)  # name prefixes removed from ``trainable``
    loss: LossWeights = field(default_factory=LossWeights)
    disc_lr: float = 1e-4
    disc_start: int = 0  # steps into the stage before the GAN term switches on
    grad_clip: float = 1.0
    crop: int | None = None  # overrides data.crop for this stage
    batch: int | None = None  # overrides data.batch for this stage
    #: Codec stages: pixel losses on a random window (pixels, multiple of 8) of the decoded picture only.
    pixel_window: int | None = None
    #: Codec stages: share of samples whose ŷ is cut after a random quadtree step (0-3 kept) and completed
    #: by the entropy model's means, so partial bitstreams (progressive delivery) decode to pictures.
    truncate_prob: float = 0.0
    #: Learning-rate multipliers by parameter-name prefix (e.g. {log_gain: 10}); the first match wins.
    lr_scale: dict[str, float] = field(default_factory=dict)
    #: Codec stages: the rate term's symbols.  ``noise`` (y + U(-1/2, 1/2), the usual proxy) or ``rounded``
    #: (the symbols the encoder writes, rounding passed straight through).  At link rates the proxy counts
    #: 1.4-5x the bits actually coded, yet training on the rounded symbols made cadc-tiny far worse on Kodak
    #: (MODEL_CARD.md, run 20): keep ``noise`` unless measuring that again.
    rate_estimate: str = "noise"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: int) -> "StageConfig":
        """A stage from its mapping in the recipe."""
        d = _take(cls, d, f"stages[{index}]")
        if d.get("kind") not in STAGE_KINDS:
            raise ConfigError(f"stages[{index}].kind must be one of {STAGE_KINDS}, got {d.get('kind')!r}")
        if int(d.get("steps", 0)) <= 0:
            raise ConfigError(f"stages[{index}].steps must be positive")
        d["loss"] = LossWeights.from_dict(d.get("loss"))
        d["steps"] = int(d["steps"])
        if d.get("pixel_window") is not None and (int(d["pixel_window"]) <= 0 or int(d["pixel_window"]) % 8):
            raise ConfigError(f"stages[{index}].pixel_window must be a positive multiple of 8, got {d['pixel_window']}")
        if not isinstance(d.get("lr_scale", {}), dict):
            raise ConfigError(f"stages[{index}].lr_scale must map parameter-name prefixes to factors")
        d["lr_scale"] = {str(k): float(v) for k, v in (d.get("lr_scale") or {}).items()}
        if d.get("rate_estimate", "noise") not in RATE_ESTIMATES:
            raise ConfigError(f"stages[{index}].rate_estimate must be one of {RATE_ESTIMATES}, got {d['rate_estimate']!r}")
        if not 0.0 <= float(d.get("truncate_prob", 0.0)) <= 1.0:
            raise ConfigError(f"stages[{index}].truncate_prob must be within [0, 1], got {d['truncate_prob']}")
        for k in ("lr", "min_lr_ratio", "disc_lr", "grad_clip", "truncate_prob"):
            if k in d:
                d[k] = float(d[k])
        return cls(**d)


@dataclass
class DataConfig:
    """Where images come from and how they are cut."""

    train: list[str]
    val: str | None = None
    crop: int = 128
    batch: int = 4
    val_limit: int = 8
    val_size: int = 256
    vflip: bool = False
    #: Decoded training images kept in RAM per process (MB); the rest are decoded again when drawn.
    cache_mb: float = 1024.0


@dataclass
class TrainConfig:
    """A whole training recipe."""

    data: DataConfig
    stages: list[StageConfig]
    seed: int = 0
    threads: int = 1
    lam_sampling: str = "log_uniform"
    #: λ drawn for training over this part of the model's ``lam_range`` only (None: all of it): a rung of the
    #: model ladder serves only some rates, so its training need not spend steps on the others
    lam_train_range: tuple[float, float] | None = None
    delta_range: tuple[float, float] = (0.75, 1.5)
    val_every: int = 500
    val_lams: int = 3
    log_every: int = 10
    ckpt_every: int = 200
    keep_checkpoints: int = 2  # the newest ones kept ...
    keep_best: bool = True  # ... plus the one with the lowest validation loss of its stage
    export_every_s: float = 900.0
    amp: str | None = None  # "bf16" on GPUs
    #: Local weights of the perceptual terms: a TorchScript LPIPS file and a transformers CLIP vision folder.
    #: A stage with a positive ``lpips`` / ``clip`` weight needs its file (the run refuses to start without:
    #: gateway.training.losses.require_perceptual_weights);
    #: a weight of 0 (or no such term) switches it off.
    lpips_path: str | None = None
    clip_path: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """A recipe from a parsed YAML mapping."""
        d = _take(cls, d, "train config")
        if "data" not in d or "stages" not in d:
            raise ConfigError("train config needs 'data' and 'stages'")
        data = dict(d["data"])
        if isinstance(data.get("train"), str):
            data["train"] = [data["train"]]
        d["data"] = DataConfig(**_take(DataConfig, data, "data"))
        d["stages"] = [StageConfig.from_dict(s, i) for i, s in enumerate(d["stages"])]
        if "delta_range" in d:
            lo, hi = (float(v) for v in d["delta_range"])
            if not 0 < lo <= hi:
                raise ConfigError(f"delta_range must be 0 < lo <= hi, got {d['delta_range']}")
            d["delta_range"] = (lo, hi)
        if d.get("lam_train_range") is not None:
            try:
                lo, hi = (float(v) for v in d["lam_train_range"])
            except (TypeError, ValueError):
                raise ConfigError(f"lam_train_range must be [lo, hi], got {d['lam_train_range']!r}") from None
            if not 0 < lo < hi:
                raise ConfigError(f"lam_train_range must be 0 < lo < hi, got {d['lam_train_range']}")
            d["lam_train_range"] = (lo, hi)
        # YAML 1.1 reads 1.0e9 (no sign in the exponent) as a string: coerce, or say which key is wrong.
        for key, kind in (("seed", int), ("threads", int), ("val_every", int), ("val_lams", int), ("log_every", int),
                          ("ckpt_every", int), ("keep_checkpoints", int), ("export_every_s", float)):
            if key in d:
                try:
                    d[key] = kind(float(d[key])) if kind is int else kind(d[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"train config: {key} must be a number, got {d[key]!r}") from None
        if d.get("lam_sampling", "log_uniform") not in ("log_uniform", "uniform"):
            raise ConfigError("lam_sampling must be 'log_uniform' or 'uniform'")
        if "keep_best" in d and not isinstance(d["keep_best"], bool):
            raise ConfigError(f"train config: keep_best must be true or false, got {d['keep_best']!r}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        """Read a recipe file, with ``--recipe-set`` overrides (``stages.0.steps=3600``) applied."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"training config not found: {p}")
        with p.open() as f:
            data = yaml.safe_load(f) or {}
        if overrides:
            data = apply_overrides(data, overrides, flag="--recipe-set")
        return cls.from_dict(data)

    @property
    def max_crop(self) -> int:
        """Largest crop any stage asks for (images are upscaled once to fit it)."""
        return max([self.data.crop] + [s.crop for s in self.stages if s.crop])

    @property
    def total_steps(self) -> int:
        """Steps over all stages."""
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, int]:
        """(stage index, step within that stage) for a global step; past the end gives the last stage."""
        start = 0
        for i, s in enumerate(self.stages):
            if step < start + s.steps:
                return i, step - start
            start += s.steps
        return len(self.stages) - 1, self.stages[-1].steps
