"""The size predictions' context model: the same function as the coder's, computed a faster way."""

from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from gateway.codec.cadc.layers import QuadtreeContext
from gateway.codec.cadc.probe_context import ProbeContext


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), kernel=st.sampled_from([3, 5]), silent=st.floats(0, 1),
       step=st.integers(0, 3), size=st.sampled_from([(1, 1), (3, 5), (8, 12)]))
def test_probe_context_gives_the_context_models_parameters(seed: int, kernel: int, silent: float, step: int,
                                                           size: tuple[int, int]) -> None:
    """Folded layers, the hyper share computed once and silent channels skipped change nothing but rounding:
    whichever channels are silent (none, some, all) and whatever the grid (1x1 included)."""
    torch.manual_seed(seed)
    n, width = 16, 12
    context = QuadtreeContext(n, width, kernel).double().eval()
    for p in context.parameters():  # trained-like magnitudes, not the tiny init's
        p.data.normal_(0, 0.3)
    probe = ProbeContext(context)
    hyper = torch.randn(1, 2 * n, *size, dtype=torch.float64)
    y_known = torch.randn(1, n, *size, dtype=torch.float64).round()
    y_known[:, torch.rand(n) < silent] = 0
    with torch.no_grad():
        mean, scale = context(step, hyper, y_known if step else None)
        prepared = probe.prepare(hyper.float())
        got_mean, got_scale = probe(step, prepared, y_known.float() if step else None)
    assert got_mean.dtype == torch.float32 and got_mean.shape == mean.shape
    torch.testing.assert_close(got_mean.double(), mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_scale.double(), scale, rtol=1e-4, atol=1e-4)


def test_probe_context_copies_and_leaves_the_coders_model_alone() -> None:
    context = QuadtreeContext(8, 8, 3).double()
    before = {k: v.clone() for k, v in context.state_dict().items()}
    probe = ProbeContext(context)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in probe.parameters())
    for k, v in context.state_dict().items():
        assert v.dtype == torch.float64 and torch.equal(v, before[k])
