"""Range coding of CADC symbols with constriction: one stream, z first, then ŷ's four groups.

The writer records every coding call so it can check, before handing the
bytes out, how many trailing bytes of constriction's u32-word output can be
dropped while the reader (which pads with zeros) still recovers every symbol
exactly: on a 430-byte frame every byte counts.

Such a check decodes only the last call it is about, from the coder's
checkpoint where that call began (``RangeEncoder.pos`` / ``RangeDecoder.seek``):
a range coder's intervals are nested, so a stream whose number lands in the
interval of the last call's last symbol lies in every earlier one too, and
the earlier calls decode exactly whenever the last one does
(``tests/test_cadc_coding.py`` holds it against full replays).  On a finely
gridded latent this is most of an encode's time saved: a layer end costs one
layer's decode instead of every layer's before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import constriction


from gateway.errors import BitstreamError

#: Zero words appended on reading so a trimmed stream never runs dry mid-symbol.
_READ_PADDING_WORDS = 2
#: At most this many non-zero trailing bytes are tried for trimming.
_MAX_TRIM_TRIES = 8


def _categorical() -> Any:
    return constriction.stream.model.Categorical(perfect=False)


def _gaussian(symbol_range: int) -> Any:
    return constriction.stream.model.QuantizedGaussian(-symbol_range, symbol_range - 1)


def _laplace(symbol_range: int, scale: float) -> Any:
    return constriction.stream.model.QuantizedLaplace(-symbol_range, symbol_range, 0.0, float(scale))


class SymbolWriter:
    """Collects symbols into one range-coded stream."""

    def __init__(self) -> None:
        self._encoder = constriction.stream.queue.RangeEncoder()
        self._ops: list[tuple[str, np.ndarray, tuple[Any, ...]]] = []
        #: The coder's (word position, state) where each call began: where a check of that call seeks to.
        self._starts: list[tuple[int, Any]] = []

    def write_categorical(self, symbols: np.ndarray, probabilities: np.ndarray) -> None:
        """Symbols 0..n-1, each with its own row of ``probabilities`` [m, n] (float64)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
        self._starts.append(self._encoder.pos())
        self._encoder.encode(symbols, _categorical(), probabilities)
        self._ops.append(("cat", symbols, (probabilities,)))

    def write_gaussian(self, symbols: np.ndarray, means: np.ndarray, stds: np.ndarray, symbol_range: int) -> None:
        """Symbols in [−R, R−1] under quantized Gaussians with per-symbol mean and std (float64)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
        means = np.ascontiguousarray(means, dtype=np.float64).ravel()
        stds = np.ascontiguousarray(stds, dtype=np.float64).ravel()
        self._starts.append(self._encoder.pos())
        self._encoder.encode(symbols, _gaussian(symbol_range), means, stds)
        self._ops.append(("gauss", symbols, (means, stds, symbol_range)))

    def write_laplace(self, symbols: np.ndarray, scale: float, symbol_range: int) -> None:
        """Symbols in [−R, R] under one zero-mean quantized Laplace of ``scale``."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
        self._starts.append(self._encoder.pos())
        self._encoder.encode(symbols, _laplace(symbol_range, scale))
        self._ops.append(("laplace", symbols, (scale, symbol_range)))

    def _replays(self, data: bytes, ops: int | None = None) -> bool:
        """Whether ``data`` (zero-padded) decodes to the first ``ops`` coding calls' symbols (all: None).

        Decodes only the last of them that holds a symbol, from its checkpoint (see the module docstring).
        """
        count = len(self._ops) if ops is None else min(ops, len(self._ops))
        last = next((i for i in range(count - 1, -1, -1) if self._ops[i][1].size), -1)
        if last < 0:
            return True  # nothing to decode
        kind, symbols, params = self._ops[last]
        try:
            got = SymbolReader(data, self._starts[last]).read_call(kind, len(symbols), params)
        except BitstreamError:
            return False
        return bool(np.array_equal(got, symbols))

    def prefix_needed(self, data: bytes, ops: int, start: int = 0) -> int:
        """Length of the shortest prefix of ``data`` from which the first ``ops`` coding calls decode exactly.

        Searches upward from ``start`` (a lower bound, e.g. the information
        content of those calls): a longer prefix of a range-coded stream only
        narrows the decoder's value towards the true one, so once a prefix
        decodes, every longer one does.
        """
        lo = max(0, min(int(start), len(data)))
        if self._replays(data[:lo], ops):
            return lo
        # Gallop up from the lower bound, then bisect: a handful of replays per layer.
        step, hi = 1, lo
        while hi < len(data):
            lo, hi = hi, min(len(data), hi + step)
            step *= 2
            if self._replays(data[:hi], ops):
                break
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._replays(data[:mid], ops):
                hi = mid
            else:
                lo = mid
        return hi

    def prefix_sufficient(self, data: bytes, ops: int, guess: int) -> int:
        """A prefix length of ``data``, at least ``guess``, from which the first ``ops`` coding calls decode exactly.

        Unlike :meth:`prefix_needed` it need not be the shortest: it accepts
        ``guess`` when one replay confirms it, and only otherwise searches up
        from there.  With a guess near the calls' information content this is
        one replay instead of a search's eight or so, which on a 12 MP picture
        is seconds of a rate-controlled encode; the price is a layer end a byte
        or two later than it could be.
        """
        guess = max(0, min(int(guess), len(data)))
        if self._replays(data[:guess], ops):
            return guess
        return self.prefix_needed(data, ops, start=guess + 1)

    def finish(self) -> bytes:
        """The stream's bytes, trimmed to the shortest prefix that still decodes exactly."""
        words = self._encoder.get_compressed()
        data = words.astype(">u4").tobytes()
        data = data.rstrip(b"\0")  # the reader pads zeros back, so trailing zeros are free to drop
        for _ in range(_MAX_TRIM_TRIES):
            if not data:
                break
            shorter = data[:-1].rstrip(b"\0")
            if not self._replays(shorter):
                break
            data = shorter
        return data


class SymbolReader:
    """Reads symbols back in the order they were written."""

    def __init__(self, data: bytes, start: tuple[int, Any] | None = None) -> None:
        """Read ``data`` (zero-padded) from its beginning, or from ``start``, a writer's checkpoint
        (``RangeEncoder.pos()``) in the same stream."""
        data = bytes(data)
        # Zeros past the end stand for the dropped bytes, up to a checkpoint beyond a short prefix too.
        words = max(-(-len(data) // 4), start[0] if start else 0) + _READ_PADDING_WORDS
        data += b"\0" * (4 * words - len(data))
        words = np.frombuffer(data, dtype=">u4").astype(np.uint32)
        try:
            self._decoder = constriction.stream.queue.RangeDecoder(words)
            if start is not None:
                self._decoder.seek(*start)
        except Exception as exc:
            raise BitstreamError(f"entropy-coded payload is unreadable: {exc}") from exc

    def read_call(self, kind: str, count: int, params: tuple[Any, ...]) -> np.ndarray:
        """The ``count`` symbols of one coding call as a :class:`SymbolWriter` records it (``kind``, ``params``)."""
        if kind == "cat":
            return self.read_categorical(params[0])
        if kind == "laplace":
            return self.read_laplace(count, *params)
        return self.read_gaussian(*params)

    def read_categorical(self, probabilities: np.ndarray) -> np.ndarray:
        """One symbol per row of ``probabilities`` (int32)."""
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
        try:
            return np.asarray(self._decoder.decode(_categorical(), probabilities), dtype=np.int32)
        except Exception as exc:
            raise BitstreamError(f"entropy-coded payload is corrupt (hyperprior symbols): {exc}") from exc

    def read_gaussian(self, means: np.ndarray, stds: np.ndarray, symbol_range: int) -> np.ndarray:
        """One symbol per (mean, std) pair (int32)."""
        means = np.ascontiguousarray(means, dtype=np.float64).ravel()
        stds = np.ascontiguousarray(stds, dtype=np.float64).ravel()
        try:
            return np.asarray(self._decoder.decode(_gaussian(symbol_range), means, stds), dtype=np.int32)
        except Exception as exc:
            raise BitstreamError(f"entropy-coded payload is corrupt (latent symbols): {exc}") from exc

    def read_laplace(self, count: int, scale: float, symbol_range: int) -> np.ndarray:
        """``count`` symbols under one zero-mean quantized Laplace of ``scale`` (int32)."""
        try:
            return np.asarray(self._decoder.decode(_laplace(symbol_range, scale), int(count)), dtype=np.int32)
        except Exception as exc:
            raise BitstreamError(f"entropy-coded payload is corrupt (colour layer): {exc}") from exc
