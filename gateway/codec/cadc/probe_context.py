"""ProbeContext: a faster float32 twin of the quadtree context model, for size predictions only.

The rate controller predicts a stream's size at several (λ, Δ) settings per
picture, and each prediction runs the context model's three conditioned
steps over every ŷ position: at y's 1/16 grid that is most of a
rate-controlled encode.  Three rewrites make a step cheaper while computing
the same function (up to float32 rounding):

- The first 1×1 layer of each step's parameter net sees ``cat(hyper, ctx(ŷ))``.
  Its hyper half depends on λ only, so it is computed once per λ
  (:meth:`ProbeContext.prepare`) and reused by every Δ probed there.
- Its context half is linear in ``ctx(ŷ)``, itself a convolution: the two
  fold into one convolution of ŷ (no 64-channel intermediate, no concat).
- ŷ is mostly zeros at a link's rates (whole channels silent: at λ 0.5 about
  40 of cadc-tiny's 64, more at higher λ), and a silent input channel adds
  nothing, so the folded convolution runs over the channels that carry a
  symbol only.

Because float32 sums come out in a different order, these parameters are
not bit-identical to the coder's float64 ones; they only steer the search,
whose pick is then coded for real with the exact networks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gateway.codec.cadc.layers import QuadtreeContext


@dataclass
class PreparedHyper:
    """What one λ's ``h_s(ẑ)`` contributes to every quadtree step (see :meth:`ProbeContext.prepare`)."""

    hyper: torch.Tensor  # [1, 2N, h, w]: step 0's input
    terms: list[torch.Tensor]  # per step 1..3: hyper's share of the first layer, its bias folded in


class ProbeContext(nn.Module):
    """Float32 size-prediction twin of a :class:`QuadtreeContext` (module docstring); weights are copied."""

    def __init__(self, context: QuadtreeContext) -> None:
        super().__init__()
        n2 = context.params[0][0].in_channels  # 2N: the hyper features' channels
        self.step0 = _copy(context.params[0])
        self.hyper_weights = nn.ParameterList()
        self.folded = nn.ParameterList()
        self.folded_bias = nn.ParameterList()
        self.tails = nn.ModuleList()
        with torch.no_grad():
            for k in range(1, 4):
                first, ctx = context.params[k][0], context.ctx[k - 1]
                # Folded in float64 (the products' sums are then rounded once), kept in float32.
                w1 = first.weight.detach().cpu().double()[:, :, 0, 0]  # [W, 2N + W]
                w_hyper, w_ctx = w1[:, :n2], w1[:, n2:]
                # (w_ctx ∘ ctx)(ŷ): one kernel-sized convolution from ŷ straight to the first layer's width.
                folded = torch.einsum("om,mikl->oikl", w_ctx, ctx.weight.detach().cpu().double())
                bias = first.bias.detach().cpu().double() + w_ctx @ ctx.bias.detach().cpu().double()
                self.hyper_weights.append(nn.Parameter(w_hyper[:, :, None, None].float(), requires_grad=False))
                self.folded.append(nn.Parameter(folded.float(), requires_grad=False))
                self.folded_bias.append(nn.Parameter(bias.float(), requires_grad=False))
                self.tails.append(_copy(context.params[k][1:]))
        self.padding = context.ctx[0].padding
        self.requires_grad_(False)

    def prepare(self, hyper: torch.Tensor) -> PreparedHyper:
        """The per-λ part of every step: ``hyper`` [1, 2N, h, w] (float32) through each step's hyper weights."""
        terms = [F.conv2d(hyper, w, b) for w, b in zip(self.hyper_weights, self.folded_bias)]
        return PreparedHyper(hyper=hyper, terms=terms)

    def forward(self, step: int, prepared: PreparedHyper,
                y_known: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, scale) in y units for quadtree ``step``, as :meth:`QuadtreeContext.forward` computes them."""
        if step == 0:
            out = self.step0(prepared.hyper)
        else:
            assert y_known is not None
            h = prepared.terms[step - 1]
            active = y_known[0].flatten(1).ne(0).any(dim=1).nonzero().flatten()
            if active.numel():
                weight = self.folded[step - 1]
                if active.numel() < weight.shape[1]:
                    y_known, weight = y_known[:, active], weight[:, active]
                h = h + F.conv2d(y_known, weight, padding=self.padding)
            out = self.tails[step - 1](h)
        mean, scale_raw = out.chunk(2, dim=1)
        return mean, F.softplus(scale_raw)


def _copy(module: nn.Module) -> nn.Module:
    """A float32 copy of ``module`` on the CPU (the context model the codec holds stays as it is)."""
    return copy.deepcopy(module).to("cpu", torch.float32)
