"""Reshape a trained CADC model's latent ``y`` (more channels, or a finer grid) and keep its weights.

Why: cadc-tiny's codec saturates far below its own VAE.  On BSDS500 `test`
its MS-SSIM stops at 0.79 however many bytes it is given (λ 0.5) while the
VAE's round trip alone is 0.87, and all of what it loses is detail finer
than ``y``'s 32-pixel cells (MODEL_CARD.md, "Where the high rates go").  Two
ways to give ``y`` room, each a warm start for a codec stage instead of
training from scratch (days on this CPU):

* :func:`finer_grid_model`: ``y`` at twice the resolution (``y_downsample``
  32 → 16): ``g_a`` without its last stride stage, ``g_s`` without its first
  upsampling, every other tensor as it was.  ``y`` then means something
  else (g_a's features one stage earlier), so the codec has to relearn, but
  from trained filters (run 11: ahead of the shipped model from ~0.05 bpp
  up after 1 800 steps);
* :func:`widen_model`: more channels at the same grid, starting as the same
  codec (run 10: training shrank the new channels instead of using them; the
  shipped model already leaves most of its 64 quiet).

Widening grows ``y`` in place:

* the old channels keep their weights, at the positions that keep each one in
  its quadtree channel group (group ``g`` of ``N`` channels holds ``N/G·g ..``),
* nothing old in the encoder reads a new channel: every weight from a new
  ``y`` channel (or a new hyper feature) into an old output is zero;
* ``g_a`` gives the new channels random filters with the old ones' spread
  and ``g_s`` reads them through random weights of its old ones' spread: the
  decoder sees ŷ rounded (straight-through), so a new channel that rounds to
  zero, or that ``g_s`` reads faintly, gets little gradient from the picture
  and the rate term alone shrinks it away (a first run with a read at 1/10
  did that).  The new channels' values are small and round to zero except
  at the lowest λ, so the decoded picture barely moves at first (kept
  within 0.02 dB PSNR on a BSDS500 picture at λ 1, level above);
* the context model gives the new channels mean 0 and a small scale, so their
  zeros cost almost nothing while training finds a use for them.

The λ gains of a new channel start at the mean of the old ones per level.

:func:`lam_range_model` moves the λ range the gains span, for a model
whose budgets sit at an end of its trained range: every level's gains are
the old table read at its new λ, extended past the old ends along the end
segments' slopes.  (Run 13 tried it on y at 1/16 and lost: Kodak's budgets
were inside the old range, and the wider one thinned the training there.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from gateway.errors import ConfigError
from gateway.training.transplant import transplant

#: Scale (y units) the context model gives a new channel at first: far below Δ, so ~0 bits.
NEW_CHANNEL_SCALE = 0.1
#: A new channel's g_a filters are drawn with this fraction of the old filters' spread.
NEW_FILTER_SPREAD = 1.0
#: g_s reads a new channel through random weights with this fraction of its old input weights' spread.
NEW_READ_SPREAD = 1.0
#: The new hyper features' h_s filters (nothing reads them yet, so any spread keeps the codec's output).
NEW_HYPER_SPREAD = 0.1


def channel_map(old: int, new: int, groups: int) -> torch.Tensor:
    """Where each old ``y`` channel goes in the widened ``y`` (same channel group, group-major order)."""
    if new <= old or new % groups or old % groups:
        raise ConfigError(f"cannot widen y from {old} to {new} channels in {groups} groups: "
                          "the new count must be larger and both divisible by the group count")
    per_old, per_new = old // groups, new // groups
    c = torch.arange(old)
    return (c // per_old) * per_new + c % per_old


def widen_state(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], old_n: int, new_n: int, groups: int,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The widened model's codec tensors from the old model's (``new`` gives the shapes; see the module doc)."""
    y = channel_map(old_n, new_n, groups)
    # Hyper features (h_s's 2N outputs, the context's first 2N inputs) have no channel groups: old ones first.
    feat = torch.arange(2 * old_n)
    # The context's parameter outputs are [mean (N); scale (N)].
    mean_scale = torch.cat([y, new_n + y])
    fresh = torch.ones(new_n, dtype=torch.bool)
    fresh[y] = False

    def params_inputs(t: torch.Tensor) -> torch.Tensor:  # [hyper (2N); y context features (the rest)]
        return torch.cat([feat, 2 * new_n + torch.arange(t.shape[1] - 2 * old_n)])

    # Per tensor name (prefix, suffix): which dimensions index y channels, and where the old ones go.
    rules: list[tuple[str, str, Callable[[torch.Tensor], dict[int, torch.Tensor]]]] = [
        ("g_a.net.", "", lambda t: {0: y}),  # only g_a's last conv has N outputs (the shape check below)
        ("g_a.refine.", ".weight", lambda t: {0: y, 1: y}),
        ("g_a.refine.", ".bias", lambda t: {0: y}),
        ("log_gain", "", lambda t: {1: y}),
        ("log_inv_gain", "", lambda t: {1: y}),
        ("h_a.net.0.", ".weight", lambda t: {1: y}),
        ("h_s.net.6.", "", lambda t: {0: feat}),
        ("ugaq.z_proj.", "", lambda t: {0: y}),
        ("ugaq.f_u.0.", ".weight", lambda t: {1: y}),
        ("ugaq.f_u.2.", "", lambda t: {0: y}),
        ("context.ctx.", ".weight", lambda t: {1: y}),
        ("context.params.", ".0.weight", lambda t: {1: params_inputs(t)}),
        ("context.params.", ".2.weight", lambda t: {0: mean_scale}),
        ("context.params.", ".2.bias", lambda t: {0: mean_scale}),
        ("g_s.net.0.", ".weight", lambda t: {1: y}),
    ]

    def rule_for(name: str) -> Callable[[torch.Tensor], dict[int, torch.Tensor]] | None:
        return next((r for prefix, suffix, r in rules if name.startswith(prefix) and name.endswith(suffix)), None)

    out = transplant(old, new, rule_for, "widen")
    # The gains of a new channel: the old channels' mean at each λ level.
    for name in ("log_gain", "log_inv_gain"):
        out[name][:, fresh] = old[name].mean(dim=1, keepdim=True)
    # g_a: random filters for the new channels (the last conv with N outputs).
    last = max((k for k in out if k.startswith("g_a.net.") and k.endswith(".weight") and out[k].shape[0] == new_n),
               key=lambda k: int(k.split(".")[2]))
    spread = float(old[last].std()) * NEW_FILTER_SPREAD
    w = out[last]
    w[fresh] = torch.randn(w[fresh].shape, generator=generator, dtype=w.dtype) * spread
    # h_s: small random filters for the new hyper features (nothing reads them yet; zeros would stay zeros).
    w = out["h_s.net.6.weight"]
    w[2 * old_n:] = torch.randn(w[2 * old_n:].shape, generator=generator, dtype=w.dtype) * (
        float(old["h_s.net.6.weight"].std()) * NEW_HYPER_SPREAD)
    # g_s reads the new channels, so the picture's gradient reaches them (values that round to 0 change nothing).
    w = out["g_s.net.0.weight"]
    w[:, fresh] = torch.randn(w[:, fresh].shape, generator=generator, dtype=w.dtype) * (
        float(old["g_s.net.0.weight"].std()) * NEW_READ_SPREAD)
    # The context model: mean 0 and a small scale for the new channels at every step.
    softplus_inverse = float(torch.log(torch.expm1(torch.tensor(NEW_CHANNEL_SCALE))))
    for name in out:
        if name.startswith("context.params.") and name.endswith(".2.bias"):
            out[name][new_n + torch.nonzero(fresh).flatten()] = softplus_inverse
    return out


def _reshaped(model: "torch.nn.Module", origin: str, **codec: object) -> "torch.nn.Module":
    """A random-init CADCModel of ``model``'s config with ``codec`` values changed, sharing its UNet, VAE and
    scheduler (the parts a reshape of y leaves alone)."""
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel

    cfg = model.config
    data = cfg.to_dict() | {"sources": cfg.sources}
    data["codec"] = dict(data["codec"], **codec)
    new_cfg = CADCConfig.from_dict(data, origin=f"{cfg.name} {origin}")
    return CADCModel(new_cfg, {"unet": model.unet, "vae": model.vae, "scheduler": model.scheduler})


def widen_model(model: "torch.nn.Module", new_channels: int, seed: int = 0) -> "torch.nn.Module":
    """A CADCModel like ``model`` with ``y`` widened to ``new_channels`` (decodes nearly the same pictures at first)."""
    from gateway.codec.cadc.bundle import codec_state_dict

    old_n, groups = model.config.codec.y_channels, model.config.codec.context_groups
    wide = _reshaped(model, f"widened to y_channels={new_channels}", y_channels=int(new_channels))
    state = widen_state(codec_state_dict(model), codec_state_dict(wide), old_n, int(new_channels), groups,
                        torch.Generator().manual_seed(seed))
    # Only the codec's tensors are given: the shared UNet / VAE are already the model's.
    _, unexpected = wide.load_state_dict(state, strict=False)
    if unexpected:
        raise ConfigError(f"widening produced tensors the model does not have: {unexpected[:4]}")
    return wide.eval()


def resample_gain_table(table: torch.Tensor, old_range: tuple[float, float],
                        new_range: tuple[float, float]) -> torch.Tensor:
    """The gain table [K, N] (logs, levels log-uniform over ``old_range``) re-read at K levels over ``new_range``.

    Inside the old range each new level takes the old table's interpolation at its λ (what
    :meth:`CADCModel.gains` computes there); outside, the nearest end segment's line in log λ
    continues, so larger λ keeps shrinking the gains instead of holding them at the old end.
    """
    (lo, hi), (new_lo, new_hi) = old_range, new_range
    if not (0 < lo < hi and 0 < new_lo < new_hi):
        raise ConfigError(f"λ ranges must be 0 < low < high, got {old_range} and {new_range}")
    k = table.shape[0]
    lams = torch.exp(torch.linspace(math.log(new_lo), math.log(new_hi), k, dtype=torch.float64))
    pos = (torch.log(lams) - math.log(lo)) / math.log(hi / lo) * (k - 1)
    i = pos.floor().clamp(0, k - 2).long()
    t = (pos - i).unsqueeze(1).to(table.dtype)  # beyond [0, 1] outside the old range: the end segment extended
    return (1 - t) * table[i] + t * table[i + 1]


def lam_range_model(model: "torch.nn.Module", lam_range: tuple[float, float]) -> "torch.nn.Module":
    """A CADCModel like ``model`` whose gains span ``lam_range`` (resampled; every other tensor as it was)."""
    old_range = model.lam_range
    new = _reshaped(model, f"with λ range {list(lam_range)}", lam_range=[float(lam_range[0]), float(lam_range[1])])
    state = model.state_dict()
    for name in ("log_gain", "log_inv_gain"):
        state[name] = resample_gain_table(state[name], old_range, new.lam_range)
    new.load_state_dict(state)
    return new.eval()


def _finer_grid_source(name: str, n_up: int) -> str:
    """The tensor of the 1/32 model that ``name`` of the 1/16 model takes: g_s's layers after the dropped
    upsampling sit two places later there ([conv, GELU, up, GELU, up, GELU, conv, GELU, conv] loses one
    "up, GELU"); g_a's dropped stage is its last, so its other names are unchanged."""
    parts = name.split(".")
    if parts[0] == "g_s" and parts[1] == "net" and int(parts[2]) >= 2 + 2 * n_up:
        parts[2] = str(int(parts[2]) + 2)
    return ".".join(parts)


def finer_grid_model(model: "torch.nn.Module") -> "torch.nn.Module":
    """A CADCModel like ``model`` with ``y`` at twice the resolution, from ``model``'s weights (see the module doc)."""
    c = model.config.codec
    if c.y_downsample != 32:
        raise ConfigError(f"a finer y grid is made from y_downsample 32 (to 16); this model has {c.y_downsample}")
    if c.analysis_widths[-1] != c.y_channels:
        raise ConfigError(f"g_a's last stage must have y's {c.y_channels} channels to become y's "
                          f"(analysis_widths ends with {c.analysis_widths[-1]})")
    if any(c.analysis_stage_blocks):
        raise ConfigError("a finer y grid is made from a g_a without analysis_stage_blocks (its last stage becomes y's); "
                          "reshape the model first, then add the blocks")
    fine = _reshaped(model, "with y at 1/16", y_downsample=16, analysis_widths=list(c.analysis_widths[:-1]))
    source = model.state_dict()
    n_up = fine.config.codec.n_down - 3
    state = {}
    for name, target in fine.state_dict().items():
        src = source.get(_finer_grid_source(name, n_up))
        if src is None or src.shape != target.shape:
            raise ConfigError(f"no weights for {name} in the model with y at 1/32: reshape only cadc-tiny-like models")
        state[name] = src
    fine.load_state_dict(state)
    return fine.eval()
