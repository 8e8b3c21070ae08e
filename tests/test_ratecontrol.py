"""Rate controller: every bitstream fits its budget, more frames never hurt, analyze runs once per scale."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codec import bitstream
from gateway.codec.base import Codec, Knobs, SearchSpace
from gateway.codec.image_io import resize_rgb
from gateway.codec.registry import decode_any, make_codec
from gateway.errors import BudgetError, ConfigError
from gateway.ratecontrol import Budget, RateResult, fit, fit_bytes
from packetizer.frame import FrameCodec
from packetizer.segment import message_capacity
from skimage import data as skdata


def gradient_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps plus a little noise: compresses like a photo, needs no data files."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 60 * np.sin(x / 7 + y / 11)], axis=-1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


class FakeCodec(Codec):
    """Bytes are a deterministic, monotone function of coded size and knobs; no real coding.

    ``overhead`` stands in for a container, so small budgets can be unreachable.
    """

    name = "fake"
    codec_id = 15

    def __init__(self, overhead: int = 0, with_estimate: bool = False) -> None:
        self.overhead = overhead
        self.analyze_calls: Counter[tuple[int, int]] = Counter()
        self.estimates_distortion = with_estimate

    def estimate_distortion(self, analysis: tuple[int, int], knobs: Knobs) -> float:
        # λ buys more than Δ costs, so the best point is not simply the highest λ.
        return 1000.0 / (1 + knobs.lam_code) + knobs.delta_code / 4

    def search_space(self) -> SearchSpace:
        return SearchSpace(lam_codes=tuple(range(255, -1, -15)), delta_codes=(0, 16, 32, 64, 128, 255))

    def analyze(self, image: np.ndarray) -> tuple[int, int]:
        size = (image.shape[1], image.shape[0])
        self.analyze_calls[size] += 1
        return size

    def nbytes(self, size: tuple[int, int], knobs: Knobs) -> int:
        bpp = 0.02 * 2 ** (knobs.lam_code / 32) / (1 + knobs.delta_code / 32)
        return bitstream.HEADER_SIZE + self.overhead + math.ceil(size[0] * size[1] * bpp / 8)

    def encode(self, analysis: tuple[int, int], knobs: Knobs, original_size: tuple[int, int]) -> bytes:
        assert analysis == bitstream.scaled_size(*original_size, knobs.scale_code)
        header = bitstream.Header(self.codec_id, 0, *original_size, knobs.scale_code, knobs.lam_code, knobs.delta_code, 0)
        return header.pack() + bytes(self.nbytes(analysis, knobs) - bitstream.HEADER_SIZE)

    def decode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError("the fake codec only measures bytes")


def setting_rank(r: RateResult) -> tuple[int, int, int]:
    """Larger image first, then higher λ, then smaller Δ (the order the controller prefers)."""
    return (-r.knobs.scale_code, r.knobs.lam_code, -r.knobs.delta_code)


def capacity(frames: int, parity: int = 0, frame_size: int = 450) -> int:
    return message_capacity(frames, FrameCodec(frame_size=frame_size, auth_key=None), parity)


def check_fits_or_needs(codec: Codec, image: np.ndarray, frames: int, parity: int = 0) -> RateResult | None:
    """The core contract: a bitstream within budget, or BudgetError naming a frame count that works."""
    try:
        r = fit(codec, image, frames, parity=parity)
    except BudgetError as exc:
        assert exc.frames_needed is not None and exc.frames_needed > frames
        assert f"needs at least {exc.frames_needed} frames" in str(exc)
        ok = fit(codec, image, exc.frames_needed, parity=parity)
        assert len(ok.bitstream) <= capacity(exc.frames_needed, parity)
        if exc.frames_needed - 1 > parity:
            with pytest.raises(BudgetError):
                fit(codec, image, exc.frames_needed - 1, parity=parity)
        return None
    assert r.budget_bytes == capacity(frames, parity)
    assert len(r.bitstream) == r.bytes <= r.budget_bytes
    assert 0 < r.utilization <= 1
    return r


sizes = st.tuples(st.integers(16, 4000), st.integers(16, 3000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, frames=st.integers(1, 32), overhead=st.sampled_from([0, 200, 900, 5000]))
def test_fake_codec_always_fits_or_says_frames_needed(size: tuple[int, int], frames: int, overhead: int) -> None:
    image = np.zeros((size[1], size[0], 3), np.uint8)
    check_fits_or_needs(FakeCodec(overhead), image, frames)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, frames=st.lists(st.integers(1, 32), min_size=2, max_size=3, unique=True))
def test_fake_codec_more_frames_never_worse(size: tuple[int, int], frames: list[int]) -> None:
    image = np.zeros((size[1], size[0], 3), np.uint8)
    codec = FakeCodec(overhead=300)
    results = []
    for n in sorted(frames):
        try:
            results.append(fit(codec, image, n))
        except BudgetError:
            assert not results, "a larger budget failed after a smaller one fitted"
    for small, large in zip(results, results[1:]):
        assert small.bytes <= large.bytes
        assert setting_rank(small) <= setting_rank(large)


@settings(max_examples=12, deadline=None)
@given(size=sizes, frames=st.integers(1, 32))
def test_analyze_runs_once_per_scale(size: tuple[int, int], frames: int) -> None:
    image = np.zeros((size[1], size[0], 3), np.uint8)
    codec = FakeCodec(overhead=100, with_estimate=True)
    r = check_fits_or_needs(codec, image, frames)
    assert max(codec.analyze_calls.values()) <= 2 if r is None else max(codec.analyze_calls.values()) == 1
    if r is not None:
        coded = bitstream.scaled_size(*size, r.knobs.scale_code)
        assert codec.analyze_calls[coded] == 1
        assert len(codec.analyze_calls) <= len(codec.search_space().scale_codes)


def test_analyze_once_per_scale_in_one_search() -> None:
    codec = FakeCodec(overhead=0)
    r = fit(codec, np.zeros((1500, 2000, 3), np.uint8), 1)
    assert r.downscaled
    assert set(codec.analyze_calls.values()) == {1}
    assert 1 < len(codec.analyze_calls) < len(codec.search_space().scale_codes)


def test_distortion_estimate_ranks_lambda_delta_pairs() -> None:
    image = np.zeros((512, 768, 3), np.uint8)
    ranked = fit(FakeCodec(with_estimate=True), image, 4)
    plain = fit(FakeCodec(), image, 4)
    assert ranked.bytes <= ranked.budget_bytes and plain.bytes <= plain.budget_bytes
    est = FakeCodec(with_estimate=True).estimate_distortion
    assert est(None, ranked.knobs) <= est(None, plain.knobs)
    assert ranked.knobs.scale_code == plain.knobs.scale_code


def test_nan_estimate_falls_back_to_highest_lambda() -> None:
    codec = FakeCodec(with_estimate=True)
    codec.estimate_distortion = lambda analysis, k: float("nan")  # type: ignore[method-assign]
    assert fit(codec, np.zeros((200, 300, 3), np.uint8), 2).knobs == fit(FakeCodec(), np.zeros((200, 300, 3), np.uint8), 2).knobs


def test_parity_and_auth_tags_shrink_the_byte_budget() -> None:
    image = np.zeros((400, 600, 3), np.uint8)
    codec = FakeCodec()
    plain = fit(codec, image, Budget(6))
    with_parity = fit(codec, image, Budget(6, parity=2))
    with_tags = fit(codec, image, Budget.for_frames(6, FrameCodec(450, b"a-real-key", 8)))
    assert with_parity.budget_bytes == capacity(6, parity=2) < plain.budget_bytes
    assert with_tags.budget_bytes == message_capacity(6, FrameCodec(450, b"k", 8)) < plain.budget_bytes
    assert with_parity.budget_counting.endswith("2 parity")
    # the frame-count shorthand means the same budget
    assert fit(codec, image, 6, auth_tag_len=8).budget_bytes == with_tags.budget_bytes


def test_budget_error_message_and_frames() -> None:
    with pytest.raises(BudgetError) as err:
        fit(FakeCodec(overhead=2000), np.zeros((64, 64, 3), np.uint8), 1, label="kodim01.png")
    assert err.value.frames_needed == 5
    assert str(err.value) == "kodim01.png needs at least 5 frames of 450 B with fake; budget was 1"


def test_parity_eating_the_whole_budget_says_frames_needed() -> None:
    with pytest.raises(BudgetError) as err:
        fit(FakeCodec(), np.zeros((32, 32, 3), np.uint8), 2, parity=2)
    assert err.value.frames_needed == 3


def test_bad_budget_arguments() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ConfigError):
        fit(FakeCodec(), image, 0)
    with pytest.raises(ConfigError, match="frame_size"):
        fit(FakeCodec(), image, 2, frame_size=5)
    with pytest.raises(ConfigError, match="tag_len"):
        Budget(2, tag_len=2)
    with pytest.raises(TypeError):
        fit(FakeCodec(), image, Budget(2), parity=1)  # the keywords belong to the frame-count shorthand


def test_fit_bytes_uses_the_raw_budget() -> None:
    r = fit_bytes(FakeCodec(), np.zeros((300, 300, 3), np.uint8), 1000)
    assert r.bytes <= 1000 and r.budget_bytes == 1000 and r.budget_frames == 0
    with pytest.raises(BudgetError) as err:
        fit_bytes(FakeCodec(overhead=500), np.zeros((30, 30, 3), np.uint8), 100)
    assert err.value.frames_needed is None and "needs at least" in str(err.value)


# --- real codecs -----------------------------------------------------------

CLASSICAL = ["jpeg", "webp", "avif", "jxl"]


@pytest.mark.parametrize("name", CLASSICAL)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(16, 320), h=st.integers(16, 240), frames=st.integers(1, 8), seed=st.integers(0, 3))
def test_real_codec_fits_or_says_frames_needed(name: str, w: int, h: int, frames: int, seed: int) -> None:
    codec = make_codec(name)
    r = check_fits_or_needs(codec, gradient_image(w, h, seed), frames)
    if r is not None:
        assert decode_any(r.bitstream, {name: codec}).shape == (h, w, 3)


PHOTOS = {
    "astronaut": resize_rgb(skdata.astronaut(), (384, 256)),
    "chelsea": resize_rgb(skdata.chelsea(), (240, 160)),
}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return PHOTOS["astronaut"]


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize("photo_name", sorted(PHOTOS))
def test_real_codec_more_frames_never_worse(name: str, photo_name: str) -> None:
    photo = PHOTOS[photo_name]
    codec = make_codec(name)
    results = [fit(codec, photo, n) for n in (1, 2, 4, 8)]
    for r in results:
        assert r.bytes <= r.budget_bytes and r.distortion is not None
        out = decode_any(r.bitstream, {name: codec})
        assert np.mean((out.astype(np.float64) - photo) ** 2) == pytest.approx(r.distortion, rel=1e-3)
    for small, large in zip(results, results[1:]):
        assert large.distortion <= small.distortion  # type: ignore[operator]
        assert large.bytes >= small.bytes


def test_small_image_with_large_budget_is_not_downscaled() -> None:
    image = gradient_image(48, 32)
    r = fit(make_codec("webp"), image, 16)
    assert not r.downscaled and r.scale == 1.0 and r.knobs.lam_code == 100


def test_as_dict_is_json_and_describes_the_setting(photo: np.ndarray) -> None:
    r = fit(make_codec("jpeg"), photo, 2)
    d = json.loads(json.dumps(r.as_dict()))
    assert d["setting"]["quality"] == r.knobs.lam_code
    assert d["bytes"] == len(r.bitstream) and d["budget_counting"] == "2 frames x 432 B payload, 0 parity"
    assert "bitstream" not in d


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 300),
    base=st.floats(20, 400),
    rates=st.lists(st.floats(0.0, 0.2), min_size=300, max_size=300),
    budget=st.integers(30, 20_000),
    per_doubling=st.sampled_from([None, 5.0, 36.0, 100.0]),
    slack=st.sampled_from([0.0, 0.03, 0.2]),
)
def test_boundary_finds_a_fitting_index_within_slack_of_the_budget(
    n: int, base: float, rates: list[float], budget: int, per_doubling: float | None, slack: float
) -> None:
    """Any sizes that fall as the index grows: the smallest fitting index, or with slack one whose size is that close."""
    from gateway.ratecontrol.search import boundary

    # Sizes fall with the index (flat stretches and jumps included); the last index is made to fit.
    sizes = [base * math.exp(sum(rates[i:n])) for i in range(n)]
    sizes = [min(s, budget) if i == n - 1 else s for i, s in enumerate(sizes)]
    probes: list[int] = []

    def size_at(i: int) -> int:
        probes.append(i)
        return max(1, round(sizes[i]))

    found = boundary(size_at, budget, 0, n - 1, per_doubling=per_doubling, slack=slack)
    first_fit = next(i for i in range(n) if max(1, round(sizes[i])) <= budget)
    assert size_at(found) <= budget
    assert found == first_fit or (slack > 0 and size_at(found) >= budget * (1 - slack))
    assert len(set(probes)) <= 4 * math.ceil(math.log2(n + 1)) + 4  # logarithmic, whatever the prior
