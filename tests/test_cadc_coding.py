"""The range coder's layer ends: where a prefix starts to hold the first k coding calls exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from gateway.codec.cadc.coding import SymbolReader, SymbolWriter
from gateway.errors import BitstreamError


def _writer(seed: int, calls: int, n: int) -> tuple[SymbolWriter, bytes]:
    rng = np.random.default_rng(seed)
    writer = SymbolWriter()
    for _ in range(calls):
        means = rng.normal(0, 3, n)
        stds = rng.uniform(0.2, 8, n)
        symbols = np.clip(np.round(rng.normal(means, stds)), -64, 63).astype(np.int32)
        writer.write_gaussian(symbols, means, stds, 64)
    return writer, writer.finish()


def _decodes(writer: SymbolWriter, data: bytes, ops: int) -> bool:
    """Whether a reader from the beginning of ``data`` gets every one of the first ``ops`` calls exactly."""
    reader = SymbolReader(data)
    try:
        for kind, symbols, params in writer._ops[:ops]:
            if not np.array_equal(reader.read_call(kind, len(symbols), params), symbols):
                return False
    except BitstreamError:
        return False
    return True


def _mixed_writer(seed: int, calls: int, n: int) -> tuple[SymbolWriter, bytes]:
    """A stream as the codec writes one: categorical ẑ, Gaussian ŷ steps (some nearly silent), a Laplace layer."""
    rng = np.random.default_rng(seed)
    writer = SymbolWriter()
    probs = rng.dirichlet(np.ones(9), size=n)
    writer.write_categorical(np.array([rng.choice(9, p=p) for p in probs]), probs)
    for _ in range(calls):
        m = int(rng.choice([0, n]))  # a quadtree step of a tiny latent can be empty
        means = rng.normal(0, 3, m)
        stds = rng.uniform(0.2, 8, m) * rng.choice([0.05, 1.0])
        symbols = np.clip(np.round(rng.normal(means, stds)), -64, 63).astype(np.int32)
        writer.write_gaussian(symbols, means, stds, 64)
    m = int(rng.choice([0, n]))
    writer.write_laplace(np.clip(np.round(rng.laplace(0, 2, m)), -20, 20).astype(np.int32), 2.0, 20)
    return writer, writer.finish()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), calls=st.integers(0, 4), n=st.sampled_from([3, 40, 400]),
       cut=st.one_of(st.floats(0, 1), st.floats(0.95, 1)), ops=st.integers(0, 6))
def test_checking_a_prefix_from_the_last_calls_checkpoint_agrees_with_reading_it_all(
        seed: int, calls: int, n: int, cut: float, ops: int) -> None:
    """The writer checks a prefix by decoding only the last call it must hold, after seeking to where that
    call began; that answer must be a whole read's, for every prefix, the full stream and the empty one."""
    writer, data = _mixed_writer(seed, calls, n)
    ops = min(ops, calls + 2)
    prefix = data[: round(cut * len(data))]
    assert writer._replays(prefix, ops) == _decodes(writer, prefix, ops)
    assert writer._replays(data) and _decodes(writer, data, calls + 2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), calls=st.integers(1, 4), ops=st.integers(1, 4), guess=st.integers(0, 2000))
def test_a_sufficient_prefix_decodes_and_is_the_guess_when_the_guess_does(seed: int, calls: int, ops: int,
                                                                          guess: int) -> None:
    writer, data = _writer(seed, calls, 300)
    ops = min(ops, calls)
    needed = writer.prefix_needed(data, ops)
    got = writer.prefix_sufficient(data, ops, guess)
    assert _decodes(writer, data[:got], ops)
    assert got >= min(guess, len(data))
    if min(guess, len(data)) >= needed:
        assert got == min(guess, len(data))  # one replay confirmed it: no search
    else:
        assert got == needed  # a guess too short falls back to the shortest prefix
    assert needed == 0 or not _decodes(writer, data[: needed - 1], ops)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 400), st.sampled_from([4, 60, 1000]), st.booleans())
def test_symbol_bits_from_the_table_equal_the_formula(seed: int, n: int, spread: int, off_grid: bool) -> None:
    """The size predictions' table of (scale, distance) cells gives the direct erfc values exactly,
    for the coder's snapped parameters, far symbols (past the table) and parameters off the grids."""
    from gateway.codec.cadc.codec import _erfc_symbol_bits, _gaussian_symbol_bits
    from gateway.codec.cadc.entropy_models import SCALE_TABLE, quantize_means, quantize_scales

    rng = np.random.default_rng(seed)
    symbols = rng.integers(-spread, spread, n).astype(np.int32)
    means = quantize_means(rng.normal(0, 5, n), 1023) + (0.01 if off_grid else 0.0)
    idx = quantize_scales(np.exp(rng.normal(0, 2, n)))
    stds = SCALE_TABLE[idx]
    direct = _erfc_symbol_bits(np.abs(symbols - means), stds)
    assert np.array_equal(_gaussian_symbol_bits(symbols, means, stds), direct)
    assert np.array_equal(_gaussian_symbol_bits(symbols, means, stds, idx), direct)
