"""Known values of the quality metrics and the Bjøntegaard delta rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from gateway.eval import metrics


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()[:256, :256]


def test_psnr_identical_is_infinite(astronaut):
    assert metrics.psnr(astronaut, astronaut) == math.inf


def test_psnr_known_value():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + 10  # MSE = 100 everywhere
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_ms_ssim_identical_is_one(astronaut):
    assert metrics.ms_ssim(astronaut, astronaut) == pytest.approx(1.0, abs=1e-9)


def test_ms_ssim_drops_with_noise(astronaut):
    rng = np.random.default_rng(0)
    def noisy(sigma: float) -> np.ndarray:
        return np.clip(astronaut + rng.normal(0, sigma, astronaut.shape), 0, 255).astype(np.uint8)
    light, heavy = metrics.ms_ssim(astronaut, noisy(5)), metrics.ms_ssim(astronaut, noisy(40))
    assert 0.95 < light < 1.0
    assert heavy < light - 0.05


def test_ms_ssim_small_images_use_fewer_scales():
    assert metrics.ms_ssim_levels(256, 256) == 5
    assert metrics.ms_ssim_levels(32, 48) == 2
    assert metrics.ms_ssim_levels(8, 8) == 1
    tiny = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert metrics.ms_ssim(tiny, tiny) == pytest.approx(1.0)


def test_shape_mismatch_is_refused(astronaut):
    with pytest.raises(ValueError):
        metrics.psnr(astronaut, astronaut[:10])


def test_bd_rate_of_a_constant_factor():
    rates = np.array([0.02, 0.04, 0.08, 0.16, 0.32])
    quality = np.array([24.0, 26.5, 29.0, 31.0, 33.5])
    assert metrics.bd_rate(rates, quality, rates * 0.8, quality) == pytest.approx(-20.0, abs=1e-6)
    assert metrics.bd_rate(rates, quality, rates * 1.5, quality) == pytest.approx(50.0, abs=1e-6)


def test_bd_rate_without_overlap_is_none():
    assert metrics.bd_rate([1, 2], [10, 11], [1, 2], [20, 21]) is None
    assert metrics.bd_rate([1], [10], [1, 2], [10, 11]) is None


def test_bd_rate_of_a_saturating_codec_that_wins_everywhere_is_negative():
    # The cadc-tiny ablation's shape: quality barely moves while the rate grows
    # 8x, and the better model is better at every budget.  A cubic fit of
    # log-rate over quality reported +70 000 % here.
    rates = [0.0088, 0.0175, 0.035, 0.070]
    m0 = [17.85, 18.55, 18.72, 18.80]
    m1 = [18.13, 18.80, 18.96, 18.99]
    v = metrics.bd_rate(rates, m0, rates, m1)
    assert v is not None and -100.0 < v < 0.0


def test_bd_rate_ignores_points_that_cost_bits_without_gaining_quality():
    rates = [0.01, 0.02, 0.04, 0.08]
    quality = [20.0, 21.0, 22.0, 23.0]
    dipped = [20.0, 21.0, 20.5, 23.0]  # the 0.04 point is dominated by the 0.02 one
    assert metrics.bd_rate(rates, quality, rates, dipped) == pytest.approx(
        metrics.bd_rate(rates, quality, [0.01, 0.02, 0.08], [20.0, 21.0, 23.0]))


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.floats(0.5, 3.0), min_size=2, max_size=6),
    gain=st.floats(0.01, 2.0),
    start=st.floats(10.0, 40.0),
)
def test_bd_rate_of_a_uniformly_better_curve_is_negative_and_bounded(base, gain, start):
    rates = np.geomspace(0.01, 0.1, len(base))
    quality = start + np.cumsum(base)
    v = metrics.bd_rate(rates, quality, rates, quality + gain)
    if v is not None:  # None only when the shift leaves no overlap
        assert -100.0 < v <= 0.0


def test_external_tools_agree_on_direction(astronaut):
    if not metrics.available()["butteraugli"]:
        assert metrics.butteraugli(astronaut, astronaut) is None
        return
    rng = np.random.default_rng(2)
    noisy = np.clip(astronaut + rng.normal(0, 20, astronaut.shape), 0, 255).astype(np.uint8)
    assert metrics.butteraugli(astronaut, noisy) > metrics.butteraugli(astronaut, astronaut)
    score_same, score_noisy = metrics.ssimulacra(astronaut, astronaut), metrics.ssimulacra(astronaut, noisy)
    if metrics.ssimulacra_version() == "ssimulacra1":
        assert score_noisy > score_same
    else:
        assert score_noisy < score_same


def test_learned_metrics_absent_without_local_weights(astronaut, tmp_path, monkeypatch):
    monkeypatch.setenv("SATGW_METRIC_WEIGHTS", str(tmp_path))
    metrics._load_torchscript.cache_clear()
    assert metrics.lpips(astronaut, astronaut) is None
    assert metrics.dists(astronaut, astronaut) is None


def test_mean_bd_rates_average_each_images_own_bd_rate():
    rates = [0.02, 0.04, 0.08, 0.16]
    records = []
    for image, factor in (("a", 0.8), ("b", 0.6)):
        quality = [24.0 + i for i in range(4)] if image == "a" else [30.0 + 2 * i for i in range(4)]
        for r, q in zip(rates, quality):
            records.append({"image": image, "codec": "ref", "ok": True, "bpp": r, "psnr": q, "ms_ssim": q / 40})
            records.append({"image": image, "codec": "new", "ok": True, "bpp": r * factor, "psnr": q,
                            "ms_ssim": q / 40})
    # a failed fit or a missing metric is left out, not averaged as zero
    records.append({"image": "a", "codec": "new", "ok": False, "bpp": 0.01, "psnr": None, "ms_ssim": None})
    bd = metrics.mean_bd_rates(records, ["ref", "new"], "ref")
    assert set(bd) == {"new"}
    assert bd["new"]["psnr"] == pytest.approx(-30.0, abs=1e-6)
    assert bd["new"]["ms_ssim"] == pytest.approx(-30.0, abs=1e-6)
