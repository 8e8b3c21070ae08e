"""CADCCodec: the CADC model behind the gateway's :class:`Codec` interface.

``analyze`` runs ``g_a`` once per image; ``encode`` does the λ gain, the
hyperprior, UGAQ and the range coding for one knob setting (milliseconds), so
the rate controller can search λ and Δ cheaply.

Bitstream payload (after the 12-byte header of :mod:`gateway.codec.bitstream`),
format v2: a :class:`~gateway.codec.cadc.layer_table.LayerTable`, then one
range-coded stream holding ẑ and then ŷ's four quadtree steps.  Every prefix
that holds ẑ decodes to a picture (:meth:`CADCCodec.decode_with_info` with
``partial=True``): the missing steps take the entropy model's means.  The
header's CRC-16 covers the header fields and ẑ, each step carries a CRC-8,
so a decoder whose probability models differ from the encoder's fails loudly
(:class:`ChecksumMismatch`) instead of producing a wrong picture.  v1 streams
(no table, one CRC-16 over all symbols) still decode.  Format v3 is v2 with
a colour layer (:mod:`gateway.codec.cadc.color_layer`) between the table and
the stream, whose size the table carries and whose bytes the header's CRC-16
covers too; the encoder writes it where the model's colour policy gives a
layer at the coded λ, v2 otherwise.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gateway.codec import bitstream
from gateway.codec.base import Codec, Knobs, QualityEstimate, SearchSpace
from gateway.codec.cadc.entropy_models import MEAN_GRID, SCALE_TABLE, quantize_means, quantize_scales
from gateway.codec.cadc.coding import SymbolReader, SymbolWriter
from gateway.codec.cadc.color_layer import (
    CellSums, ColorLayer, ColorLayerPolicy, ColorLayerSettings, apply_color_layer, decode_color_layer, encode_color_layer,
)
from gateway.codec.cadc.devices import resolve_device, resolve_precision
from gateway.codec.cadc.encoder import CADCEncoder
from gateway.codec.cadc.layer_table import LAYERS, LayerTable, crc8, split_payload
from gateway.codec.cadc.knob_values import delta_from_code, lam_from_code
from gateway.codec.cadc.model import CADCModel, step_phase
from gateway.codec.cadc.probe_context import PreparedHyper, ProbeContext
from gateway.codec.cadc.refine import RefineSettings, measure, refine
from gateway.codec.cadc.tile_grid import Span
from gateway.codec.cadc.tiled_analysis import analyze as analyze_in_tiles, to_model_input
from gateway.codec.cadc.tiled_synthesis import TiledSynthesis, TileSettings
from gateway.codec.cpu_heap import keep_freed_memory
from gateway.errors import BitstreamError, BundleError, ChecksumMismatch, CodecError, ModelMismatch

#: Generous bound on payload bytes per coded symbol; anything longer is not a CADC stream.
_MAX_BYTES_PER_SYMBOL = 4
#: Per-λ encoder state kept on an analysis (the rate controller probes a handful of λ codes).
_LAM_CACHE_SIZE = 16
#: Pictures from this size on (pixels, as analysed) encode with ``large_encoder_threads``.
_LARGE_PICTURE_PIXELS = 2_000_000
#: From this many ŷ positions on, the float32 size predictions run on ``large_encoder_threads``: the work
#: of a prediction grows with y's grid, not with the picture's pixels (a Kodak picture is 384 positions
#: at y's 1/32, where a second thread only waits, and 1 536 at 1/16, where it makes a context pass ~2x faster).
_PARALLEL_PROBE_POSITIONS = 1_024


#: Bytes the range coder adds over the information content (flush, minus trimming), on average.
_CODER_OVERHEAD_BYTES = 3.0
#: And per ŷ symbol: the leaky quantization's floor takes a little probability from every likely symbol
#: (measured with cadc-tiny v2: 21.5 bytes over 786k symbols of a 12 MP picture, 5 over 197k, ~0 over 12k).
_CODER_OVERHEAD_BYTES_PER_SYMBOL = 2.7e-5
#: Smallest probability the coder's leaky quantization gives a symbol (constriction's 24-bit precision).
_MIN_PROBABILITY = 2.0**-24
#: A prefix cut inside a quadtree step still holds that step's first symbols: those whose information
#: content, added up from the step's start, stays this many bits below the bytes received (measured on
#: BSDS500 test pictures cut every 37 bytes: the correctly decoded run ended at most 92 bits short).
_PARTIAL_STEP_MARGIN_BITS = 128
#: Symbols decoded per call while reading a cut step (a call that runs past the data fails as a whole).
_PARTIAL_STEP_CHUNK = 64


def _erfc_symbol_bits(v: np.ndarray, std: np.ndarray) -> np.ndarray:
    """−log2 of the mass of a unit bin at distance ``v`` from the mean of N(mean, std²)."""
    from scipy.special import erfc

    k = 1.0 / (std * np.sqrt(2.0))
    p = 0.5 * (erfc((v - 0.5) * k) - erfc((v + 0.5) * k))
    return -np.log2(np.maximum(p, _MIN_PROBABILITY))


#: Largest bits table (distances in 1/MEAN_GRID bins; 96 scales x 8192 float64 = 6 MB); a symbol farther
#: than 512 bins from its mean (never seen in practice) takes the direct formula instead.
_MAX_BITS_TABLE_OFFSETS = 1 << 13


@functools.lru_cache(maxsize=4)
def _symbol_bits_table(offsets: int) -> np.ndarray:
    """:func:`_erfc_symbol_bits` for every table scale x every distance k / MEAN_GRID, k < ``offsets``."""
    v = np.arange(offsets, dtype=np.float64)[None, :] / MEAN_GRID
    return _erfc_symbol_bits(v, SCALE_TABLE[:, None])


def _gaussian_symbol_bits(
    symbols: np.ndarray, mean: np.ndarray, std: np.ndarray, scale_idx: np.ndarray | None = None
) -> np.ndarray:
    """−log2 P(symbol) of each symbol under quantized Gaussians N(mean, std²) over unit bins.

    The coder's parameters are snapped (means to 1/MEAN_GRID, stds to SCALE_TABLE), so every
    (distance, std) pair is a cell of one precomputed table: a gather instead of two erfc per
    symbol (a 12 MP picture's size predictions spent ~0.4 s there), with the same float64 values.
    ``scale_idx``: the stds' SCALE_TABLE indices where the caller has them (else found here).
    Parameters off those grids take the direct formula.
    """
    v = np.abs(symbols - mean)
    off = np.rint(v * MEAN_GRID).astype(np.int64)
    idx = quantize_scales(std) if scale_idx is None else scale_idx
    on_grid = np.array_equal(off, v * MEAN_GRID) and (scale_idx is not None or np.array_equal(SCALE_TABLE[idx], std))
    if off.size and on_grid:
        size = 1 << max(10, int(off.max()).bit_length())  # a few sizes over a codec's life, cached
        if size <= _MAX_BITS_TABLE_OFFSETS:
            return _symbol_bits_table(size)[idx, off]
    return _erfc_symbol_bits(v, std)


def _gaussian_bits(
    symbols: np.ndarray, mean: np.ndarray, std: np.ndarray, scale_idx: np.ndarray | None = None
) -> float:
    """−Σ log2 P(symbol) under quantized Gaussians N(mean, std²) over unit bins."""
    return float(_gaussian_symbol_bits(symbols, mean, std, scale_idx).sum())


def step_elements(array: np.ndarray, step: int, groups: int) -> np.ndarray:
    """The elements of ``array`` [N, h, w] that quadtree ``step`` codes, flat, in coding order.

    Coding order: channel group by channel group, each group's elements at
    its phase of this step (:func:`gateway.codec.cadc.model.step_phase`) in C order.
    """
    per = array.shape[0] // groups
    parts = []
    for g in range(groups):
        r, c = step_phase(step, g, groups)
        parts.append(array[g * per : (g + 1) * per, r::2, c::2].reshape(-1))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def set_step_elements(array: np.ndarray, step: int, groups: int, values: np.ndarray) -> None:
    """Write flat ``values`` (as :func:`step_elements` orders them) into ``array`` [N, h, w] in place."""
    per = array.shape[0] // groups
    offset = 0
    for g in range(groups):
        r, c = step_phase(step, g, groups)
        view = array[g * per : (g + 1) * per, r::2, c::2]
        view[...] = values[offset : offset + view.size].reshape(view.shape)
        offset += view.size


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block with torch on ``count`` threads (None: leave the caller's setting)."""
    n = torch.get_num_threads()
    if count is None or count == n:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _one_thread() -> Any:
    """Run the small coding-time networks on one thread.

    At y's size (a few hundred positions) threading only adds overhead (and on a
    loaded host a parallel region waits for its slowest thread); one thread also
    makes the float64 parameter nets' summation order independent of the
    caller's thread count.
    """
    return _threads(1)


@dataclass
class CADCAnalysis:
    """What :meth:`CADCCodec.analyze` computes once per image."""

    y: torch.Tensor  # [1, N, h, w] g_a output (padded image)
    image: np.ndarray  # HxWx3 uint8, the caller's picture (not copied: a large one is most of the memory)
    width: int
    height: int
    #: lam_code -> _LamState: what one λ costs (h_a, UGAQ, h_s, step-0 parameters), reused across Δ.
    lam_cache: dict[int, "_LamState"] = field(default_factory=dict, repr=False)
    #: Colour layer bytes per settings (the rate controller's λ probes share a few), and the picture's cell
    #: sums they are made from.
    color_cache: dict[ColorLayerSettings, bytes] = field(default_factory=dict, repr=False)
    cell_sums: CellSums | None = field(default=None, repr=False)

    def pixels(self, rows: Span, cols: Span, device: torch.device) -> torch.Tensor:
        """The picture over ``rows`` x ``cols`` as [1, 3, h, w] floats in [0, 1]."""
        return to_model_input(self.image[rows.start : rows.stop, cols.start : cols.stop], device)


@dataclass
class _LamState:
    """Everything of one encode that depends on λ but not on Δ."""

    z: np.ndarray  # int32 [Cz, hz, wz]
    v: torch.Tensor  # [1, N, h, w] ȳ = y·gain / m (q = round(v / Δ))
    #: Per precision ("exact": float64, what the coder uses; "probe": float32, size predictions of large
    #: pictures), computed when first needed: h_s(ẑ) [1, 2N, h, w] and step 0's mean, scale (y units,
    #: coding order).
    params: dict[str, tuple[torch.Tensor, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


@dataclass
class _Symbols:
    z: np.ndarray  # int32 [Cz, hz, wz]
    q: np.ndarray  # int32 [N, h, w]
    steps: int = 4  # quadtree steps of q that were decoded (the rest is 0 and filled in by the decoder)
    #: Of the step after those (a prefix cut inside it): 1 where q holds a decoded symbol (None: nothing).
    partial: np.ndarray | None = None
    #: The stream's colour layer (format 3), laid onto the synthesised picture; None: none.
    color: ColorLayer | None = None


def _symbol_bytes(symbols: np.ndarray) -> bytes:
    """Integer symbols as the checksums see them (int16, big endian)."""
    return np.asarray(symbols).astype(">i2").tobytes()


class CADCCodec(Codec):
    """The content-adaptive diffusion codec (codec id 1)."""

    name = "cadc"
    codec_id = bitstream.CODEC_IDS["cadc"]
    progressive = True

    #: Bitstream format written by :meth:`encode` (3: layered with a colour layer where the policy gives one,
    #: 2 where not; 2: layered, prefix-decodable, never a colour layer; 1: the first format).
    bitstream_version: int = 3
    predicts_bytes = True  # estimate_bytes: the rate controller searches on predictions
    estimates_distortion = True  # estimate_distortion: the ADGIC auxiliary reconstruction's MSE

    #: Threads for ``g_a`` in :meth:`analyze` (None: the caller's torch setting).  Two: its full-resolution
    #: first layers split well (Kodak size: 77 ms on one thread, 32-46 ms on two, 2-core sender), and
    #: nothing of it is mirrored by the decoder (the symbols are sent), so the count cannot change what decodes.
    encoder_threads: int | None = 2
    #: Threads for ``g_a`` of pictures of at least :data:`_LARGE_PICTURE_PIXELS` and the float32 size
    #: predictions of latents of at least :data:`_PARALLEL_PROBE_POSITIONS` (smaller ones predict on one
    #: thread: at a few hundred ŷ positions a second thread only waits).  There each prediction is long
    #: enough that a second thread pays (~1.7x); predictions only steer the search, so this cannot change
    #: what decodes either.
    large_encoder_threads: int | None = 2

    #: Encoder-side refinement of the chosen setting's symbols (:mod:`gateway.codec.cadc.refine`); off
    #: (0 iterations) by default: it costs seconds per iteration and needs the whole model at the sender.
    refine_settings: RefineSettings = RefineSettings(iterations=0)

    #: Threads for the decoder's synthesis (g_s, UNet, VAE); None: the caller's torch setting.  Fixed by
    #: default because the UNet's float results depend on the thread count (a few 1e-7), which can flip
    #: a pixel's rounding: with a fixed count the decoded picture is the same however the caller is set.
    #: Two, the ground-station target (2 cores): cadc-tiny's KL VAE decodes a Kodak image in ~0.75 s
    #: there against ~1.35 s on one thread.
    decoder_threads: int | None = 2

    def __init__(self, model: CADCEncoder, device: str | torch.device | None = "cpu",
                 precision: str | torch.dtype | None = None) -> None:
        """Wrap ``model`` (a whole :class:`CADCModel`, or only its :class:`CADCEncoder` half: encoding only).

        ``device`` (``auto``, ``cpu``, ``cuda[:n]``) is where g_a, g_s and the
        pretrained parts run; ``precision`` the dtype of the UNet, VAE, text
        encoder and captioner there (:mod:`gateway.codec.cadc.devices`).
        """
        self.device = resolve_device(device)
        #: Whether this codec can synthesise pictures (an encoder-only model cannot: the sender's codec).
        self.decodes = isinstance(model, CADCModel)
        if self.device.type == "cpu":
            keep_freed_memory()  # full-resolution activations would otherwise be page-faulted in on every layer
        self.precision = resolve_precision(precision, self.device) if self.decodes else torch.float32
        self.model = model.to(self.device).eval()
        if self.decodes and self.precision != torch.float32:
            for part in model.pretrained_modules():
                part.to(self.precision)
        if not self.decodes:
            self.estimates_distortion = False  # its proxy needs g_s and the auxiliary decoder
        #: The bundle folder the codec was loaded from (None: built in memory); its quality predictor's source.
        self.bundle_path: Path | None = None
        # predict_quality reads x̂_aux: any model with ADGIC, an encoder-only one too (g_s and the auxiliary
        # decoder are loaded from the bundle on first use).
        self.predicts_quality = bool(model.config.codec.adgic)
        self._quality_predictor: Any = None
        self._quality_lock = threading.Lock()
        cfg = model.config.codec
        self.z_range = cfg.z_symbol_range
        self.y_range = cfg.y_symbol_range
        self.max_pixels = min(cfg.max_pixels, bitstream.MAX_PIXELS)
        self.oversize = cfg.oversize
        self.tiles = TileSettings.of(cfg)
        self.analysis_tile = cfg.analysis_tile
        #: Which colour layer the encoder sends at each λ (the config's rows; none: never).
        self.color_policy = ColorLayerPolicy.from_config(cfg.color_layer)
        # Everything that selects a probability model runs in float64 on the CPU from integer
        # inputs, so encoder and decoder compute bit-identical parameters.
        self._param_nets = nn.ModuleDict({"h_s": copy.deepcopy(model.h_s), "context": copy.deepcopy(model.context)})
        self._param_nets = self._param_nets.to("cpu", torch.float64).eval()
        # Their float32 twins, for size predictions only: a prediction steers the rate controller, whose
        # pick is then coded for real with the float64 nets, and float32 convolutions are several times
        # faster (a Kodak-size prediction 10 ms; the picks of 32 Kodak fits identical to float64's).  The
        # context's twin also folds its layers and skips silent channels (:mod:`.probe_context`).
        self._probe_nets = nn.ModuleDict({"h_s": copy.deepcopy(model.h_s).to("cpu", torch.float32).eval(),
                                          "context": ProbeContext(self._param_nets["context"]).eval()})
        # g_a in channels_last: its first conv (3 -> w, 5x5, stride 2, full resolution) is most of the
        # encoder's time and runs ~3x faster in that layout on CPU (converted in place: the codec is its only user).
        self._g_a = model.g_a.to(memory_format=torch.channels_last).eval()
        if self.decodes:
            # The VAE decoder runs its convs at up to full resolution: channels_last is ~1.5x faster on CPU.
            self.model.vae.to(memory_format=torch.channels_last)
        tables = model.entropy_bottleneck.to("cpu").integer_tables(self.z_range)
        model.entropy_bottleneck.to(self.device)
        self._z_tables = tables  # [Cz, 2R+1]
        self._z_bits = -np.log2(tables / tables.sum(axis=1, keepdims=True))  # [Cz, 2R+1]

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: str | Path | None = None, device: str | torch.device | None = "cpu",
                    precision: str | torch.dtype | None = None, encoder_only: bool = False) -> "CADCCodec":
        """Load a bundle folder (None: the embedded ``cadc-tiny`` bundle).

        ``encoder_only`` (the sender): read only the encoder's tensors and build
        no UNet, VAE, text encoder or captioner; the codec then encodes and
        entropy-decodes but does not synthesise pictures.
        """
        from gateway.codec.cadc.bundle import CODEC_WEIGHTS, load_encoder, load_model
        from gateway.paths import bundle_dir

        if path is None:
            path = bundle_dir("cadc-tiny")
            if not (Path(path) / CODEC_WEIGHTS).is_file():
                raise BundleError(
                    f"the embedded cadc-tiny bundle at {path} has no weights yet; train it with tools/train.py, "
                    "or pass a bundle folder (make a random-init one with: satgw bundle create "
                    "configs/models/cadc-tiny.yaml OUT)"
                )
        target = resolve_device(device)
        if encoder_only:
            codec = cls(load_encoder(path, device=target), device=target)
        else:
            codec = cls(load_model(path, device=target, dtype=resolve_precision(precision, target)), device=target,
                        precision=precision)
        codec.bundle_path = Path(path)
        return codec

    @property
    def model_id(self) -> int:
        return int(self.model.model_id)

    # -- knobs -----------------------------------------------------------------------------------
    def lam(self, lam_code: int) -> float:
        """λ for a header code."""
        return lam_from_code(lam_code, self.model.lam_range)

    def delta(self, delta_code: int) -> float:
        """Δ for a header code."""
        return delta_from_code(delta_code, self.model.delta_range)

    def search_space(self) -> SearchSpace:
        """Every λ code (most bits first) and every Δ code (ascending): one code is ~2 % in λ, ~0.8 % in Δ.

        The rate controller searches this grid on :meth:`estimate_bytes`
        (milliseconds per probe) around :attr:`rate_anchor_delta_code`.
        """
        return SearchSpace(lam_codes=tuple(range(255, -1, -1)), delta_codes=tuple(range(256)))

    @property
    def rate_anchor_delta_code(self) -> int:
        """The Δ code the rate controller holds while it searches λ: Δ = 1, where training puts half its samples."""
        from gateway.codec.cadc.knob_values import code_from_delta

        return code_from_delta(1.0, self.model.delta_range)

    def describe(self, knobs: Knobs) -> dict[str, Any]:
        out = super().describe(knobs)
        out.update(lam=self.lam(knobs.lam_code), delta=self.delta(knobs.delta_code), model_id=f"{self.model_id:04x}")
        return out

    # -- encoder ---------------------------------------------------------------------------------
    def analyze(self, image: np.ndarray) -> CADCAnalysis:
        """Run g_a once on an HxWx3 uint8 RGB image."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise CodecError(f"CADC needs an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
        h, w = image.shape[:2]
        if h * w > self.max_pixels:
            raise CodecError(f"image {w}x{h} is larger than the {self.max_pixels}-pixel limit of this model")
        pad = self.model.config.codec.pad_multiple
        with torch.no_grad(), _threads(self._encoder_threads(h * w)):
            y = analyze_in_tiles(self._g_a, image, pad, self.analysis_tile, self.device)
        return CADCAnalysis(y=y, image=image, width=w, height=h)

    def refines(self, analysis: CADCAnalysis) -> bool:
        """Whether :meth:`refine_symbols` runs for ``analysis``: a whole model, refinement on, picture within its limit."""
        s = self.refine_settings
        return self.decodes and s.iterations > 0 and analysis.width * analysis.height <= s.max_pixels

    def refine_symbols(self, analysis: CADCAnalysis, knobs: Knobs) -> tuple[CADCAnalysis, dict[str, Any]]:
        """Symbols optimised for ``knobs`` by gradient steps through the decoder (:mod:`.refine`)."""
        refined, report = refine(self, analysis, knobs, self.refine_settings)
        return refined, {**report.as_dict(), "improved": report.improved}

    def symbol_distortion(self, analysis: CADCAnalysis, knobs: Knobs) -> float:
        """The refinement's distortion of ``analysis``'s symbols at ``knobs`` (one decoder pass, :func:`.refine.measure`)."""
        return measure(self, analysis, knobs, self.refine_settings)[1]

    def _encoder_threads(self, pixels: int) -> int | None:
        """Torch threads for the encoder-only work on a picture of ``pixels`` (None: the caller's setting)."""
        if self.device.type != "cpu":
            return None
        return self.large_encoder_threads if pixels >= _LARGE_PICTURE_PIXELS else self.encoder_threads

    def _probe_threads(self, positions: int) -> int | None:
        """Torch threads for the float32 size predictions of a ŷ of ``positions`` (None: the caller's setting)."""
        if self.device.type != "cpu":
            return None
        return self.large_encoder_threads if positions >= _PARALLEL_PROBE_POSITIONS else 1

    @torch.no_grad()
    def _lam_state(self, analysis: CADCAnalysis, lam_code: int) -> _LamState:
        """Gain, h_a, UGAQ and h_s for one λ (cached on the analysis: Δ probes reuse it)."""
        state = analysis.lam_cache.get(lam_code)
        if state is not None:
            return state
        model = self.model
        # h_a and UGAQ are encoder-only (ẑ is sent, m never leaves the sender), so like g_a they may run on
        # more than one thread where the grid is large enough to pay: the count cannot change what decodes.
        with _threads(self._probe_threads(analysis.y.shape[-2] * analysis.y.shape[-1])):
            lam = torch.tensor([self.lam(lam_code)], device=self.device)
            gain, _ = model.gains(lam)
            y_g = analysis.y * gain[:, :, None, None]
            z_int = torch.round(model.h_a(y_g)).clamp(-self.z_range, self.z_range)
            m = model.ugaq_scale(analysis.y, y_g, z_int)
            z = z_int[0].cpu().numpy().astype(np.int32)
        state = _LamState(z=z, v=y_g / m)
        if len(analysis.lam_cache) >= _LAM_CACHE_SIZE:
            analysis.lam_cache.pop(next(iter(analysis.lam_cache)))
        analysis.lam_cache[lam_code] = state
        return state

    @torch.no_grad()
    def _quantize(self, analysis: CADCAnalysis, knobs: Knobs) -> _Symbols:
        """Gain, hyperprior and UGAQ for one knob setting: the integer symbols."""
        state = self._lam_state(analysis, knobs.lam_code)
        with _one_thread():
            q = torch.round(state.v / self.delta(knobs.delta_code)).clamp(-self.y_range, self.y_range - 1)
        return _Symbols(z=state.z, q=q[0].cpu().numpy().astype(np.int32))

    def _hyper(self, z: np.ndarray) -> torch.Tensor:
        """h_s(ẑ) in float64 (call inside :func:`_one_thread` and no_grad)."""
        return self._param_nets["h_s"](torch.from_numpy(z).double().unsqueeze(0))

    def _step_params(
        self, hyper: torch.Tensor | PreparedHyper, y_known: torch.Tensor | None, step: int,
        nets: nn.ModuleDict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and scale (y units, float64) of the elements quadtree ``step`` codes, in coding order.

        The training pass's ``context(step, hyper, ŷ·known)``, evaluated in
        float64 on one thread (``y_known``: ŷ in y units, zeros where not yet
        decoded) and then gathered with :func:`step_elements`.  At y's size
        (1/32 of the image side) the dense evaluation costs a few milliseconds.
        ``nets``: the float32 probe nets instead (size predictions only;
        ``hyper`` is then their :class:`PreparedHyper`).
        Call inside :func:`_one_thread` and no_grad.
        """
        mean, scale = (nets or self._param_nets)["context"](step, hyper, y_known)
        groups = self.model.config.codec.context_groups
        mean, scale = mean[0].double().numpy(), scale[0].double().numpy()
        return step_elements(mean, step, groups), step_elements(scale, step, groups)

    def _params(
        self, state: _LamState, kind: str, threads: int | None = 1
    ) -> tuple[nn.ModuleDict, torch.Tensor, tuple[np.ndarray, np.ndarray]]:
        """(nets, h_s(ẑ), step 0's mean and scale) of one λ in precision ``kind`` ("exact" or "probe").

        ``threads`` only for "probe": the exact nets always run on one thread (the decoder's arithmetic).
        """
        nets = self._param_nets if kind == "exact" else self._probe_nets
        if kind not in state.params:
            with torch.no_grad(), _threads(1 if kind == "exact" else threads):
                dtype = torch.float64 if kind == "exact" else torch.float32
                hyper = nets["h_s"](torch.from_numpy(state.z).to(dtype).unsqueeze(0))
                if kind != "exact":
                    hyper = nets["context"].prepare(hyper)  # the per-λ share of every step, once
                state.params[kind] = (hyper, self._step_params(hyper, None, 0, nets))
        return (nets, *state.params[kind])

    def _coding_params(self, mean: np.ndarray, scale: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
        """Quantized mean/std (bin units) handed to the range coder."""
        means, idx = self._coding_indices(mean, scale, delta)
        return means, SCALE_TABLE[idx]

    def _coding_indices(self, mean: np.ndarray, scale: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
        """Quantized means (bin units) and the SCALE_TABLE indices of the stds handed to the range coder."""
        return quantize_means(mean / delta, self.y_range - 1), quantize_scales(scale / delta)

    def _z_probabilities(self, z_shape: tuple[int, int, int]) -> np.ndarray:
        c, h, w = z_shape
        return np.repeat(self._z_tables, h * w, axis=0)

    def _steps(
        self, analysis: CADCAnalysis, knobs: Knobs, q: np.ndarray, kind: str = "exact"
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """(symbols, coding means, coding stds, their SCALE_TABLE indices) of each quadtree step of ``q``,
        in coding order.

        ``kind`` "probe": computed by the float32 nets (size predictions only).
        """
        state = self._lam_state(analysis, knobs.lam_code)
        # The exact nets stay on one thread (the decoder must compute the same parameters bit for bit);
        # the float32 probe nets only predict sizes, so a large picture's may use more.
        threads = 1 if kind == "exact" else self._probe_threads(q.shape[-2] * q.shape[-1])
        nets, hyper, step0 = self._params(state, kind, threads)
        delta = self.delta(knobs.delta_code)
        groups = self.model.config.codec.context_groups
        with torch.no_grad(), _threads(threads):
            y_hat = q.astype(np.float64 if kind == "exact" else np.float32) * delta
            y_known = np.zeros_like(y_hat)
            for step in range(4):
                raw = step0 if step == 0 else self._step_params(hyper, torch.from_numpy(y_known)[None], step, nets)
                means, idx = self._coding_indices(*raw, delta)
                yield step_elements(q, step, groups), means, SCALE_TABLE[idx], idx
                set_step_elements(y_known, step, groups, step_elements(y_hat, step, groups))

    def _z_info_bits(self, z: np.ndarray) -> float:
        """Information content (bits) of the ẑ symbols under their integer tables."""
        c = np.arange(z.shape[0])[:, None]
        return float(self._z_bits[c, z.reshape(z.shape[0], -1) + self.z_range].sum())

    def estimate_bytes(self, analysis: CADCAnalysis, knobs: Knobs) -> float:
        """Bitstream length (header and layer table included) predicted without range coding.

        The information content of every symbol under the very models the
        coder is given (ẑ: the integer tables; ŷ: Gaussians with the snapped
        means and table scales), plus the coder's flush overhead and the layer
        table.  Agrees with ``len(encode(...))`` to a few bytes at a fraction
        of the cost (no coder run, no trimming replays); the rate controller
        searches with it and checks its final pick with :meth:`encode`.
        """
        sym = self._quantize(analysis, knobs)
        bits = [self._z_info_bits(sym.z)] + [_gaussian_bits(*step) for step in self._steps(analysis, knobs, sym.q, "probe")]
        layer_bytes = [b / 8.0 for b in bits]
        color = self._color_layer(analysis, knobs.lam_code)
        return (bitstream.HEADER_SIZE + LayerTable.size_for(layer_bytes, len(color) if color else None)
                + len(color) + sum(layer_bytes)
                + _CODER_OVERHEAD_BYTES + _CODER_OVERHEAD_BYTES_PER_SYMBOL * sym.q.size)

    def _color_layer(self, analysis: CADCAnalysis, lam_code: int) -> bytes:
        """The colour layer the policy gives at ``lam_code`` (b"": none, or a format without one)."""
        if self.bitstream_version < 3:
            return b""
        settings = self.color_policy.settings_for(self.lam(lam_code))
        if settings.empty:
            return b""
        if settings not in analysis.color_cache:
            if analysis.cell_sums is None:
                analysis.cell_sums = CellSums(analysis.image)
            analysis.color_cache[settings] = encode_color_layer(analysis.image, settings, analysis.cell_sums)
        return analysis.color_cache[settings]

    def encode(self, analysis: CADCAnalysis, knobs: Knobs, original_size: tuple[int, int]) -> bytes:
        """Bitstream (header, layer table, range-coded ẑ and ŷ steps) for one (λ, Δ) setting."""
        ow, oh = original_size
        if bitstream.scaled_size(ow, oh, knobs.scale_code) != (analysis.width, analysis.height):
            raise CodecError(
                f"analysis is {analysis.width}x{analysis.height} but original {ow}x{oh} at scale code "
                f"{knobs.scale_code} is {bitstream.scaled_size(ow, oh, knobs.scale_code)}; analyze the downscaled image"
            )
        sym = self._quantize(analysis, knobs)
        writer = SymbolWriter()
        writer.write_categorical(sym.z.ravel() + self.z_range, self._z_probabilities(sym.z.shape))
        steps, bits = [], [self._z_info_bits(sym.z)]
        for symbols, mean, std, idx in self._steps(analysis, knobs, sym.q):
            writer.write_gaussian(symbols, mean, std, self.y_range)
            steps.append(symbols)
            bits.append(_gaussian_bits(symbols, mean, std, idx))
        stream = writer.finish()
        color = self._color_layer(analysis, knobs.lam_code)
        header = bitstream.Header(
            codec_id=self.codec_id,
            model_id=self.model_id,
            width=ow,
            height=oh,
            scale_code=knobs.scale_code,
            lam_code=knobs.lam_code,
            delta_code=knobs.delta_code,
            checksum=0,
            version=3 if color else min(self.bitstream_version, 2),
        )
        if self.bitstream_version == 1:
            return bitstream.pack(header.with_checksum(_symbol_bytes(sym.z) + _symbol_bytes(sym.q)), stream)
        # Where each layer ends: a prefix that decodes it, confirmed by one replay at a guess and searched further
        # up only when that fails.  The guess is the layers' information content plus their share of the
        # coder's overhead over it, which grows with the symbol count (the quantized Gaussians' probability
        # floor: about 2e-4 bits a symbol, 18 bytes on a 12 MP picture), plus one byte.
        counts = [sym.z.size, *(s.size for s in steps)]
        per_symbol = max(0.0, len(stream) - sum(bits) / 8.0) / sum(counts)
        ends, info = [], 0.0
        for layer in range(LAYERS - 1):
            info += bits[layer] / 8.0 + per_symbol * counts[layer]
            ends.append(writer.prefix_sufficient(stream, layer + 1, guess=max(ends[-1] if ends else 0, int(info) + 1)))
        ends.append(len(stream))
        sizes = tuple(b - a for a, b in zip([0, *ends[:-1]], ends))
        table = LayerTable(sizes, tuple(crc8(_symbol_bytes(s)) for s in steps), len(color) if color else None)
        return bitstream.pack(header.with_checksum(_symbol_bytes(sym.z) + color), table.pack() + color + stream)

    def estimate_distortion(self, analysis: CADCAnalysis, knobs: Knobs) -> float:
        """MSE (pixels in [0, 1]) of the ADGIC auxiliary reconstruction: a cheap proxy of the final distortion.

        Runs g_s and the auxiliary decoder only (no UNet, no VAE).  Returns
        NaN when ADGIC is off.
        """
        if not self.decodes or self.model.aux_decoder is None:
            return float("nan")
        sym = self._quantize(analysis, knobs)
        with torch.no_grad():
            lam = torch.tensor([self.lam(knobs.lam_code)], device=self.device)
            _, inv_gain = self.model.gains(lam)
            y_hat = torch.from_numpy(sym.q).float().unsqueeze(0).to(self.device) * self.delta(knobs.delta_code)
            synthesis = TiledSynthesis(self.model, y_hat, inv_gain, (analysis.width, analysis.height), self.tiles)
            return synthesis.aux_squared_error(lambda rows, cols: analysis.pixels(rows, cols, self.device))

    def quality_predictor(self) -> Any:
        """The :class:`~gateway.codec.cadc.quality_predictor.QualityPredictor` of this codec (made on first use).

        On an encoder-only codec this reads g_s and the auxiliary decoder from
        the bundle (still no UNet, VAE or text model); the bundle's quality
        calibration comes with it when it fits these weights.
        """
        if not self.predicts_quality:
            raise CodecError(f"model {self.model.config.name} has no auxiliary decoder (ADGIC off): "
                             "its quality cannot be predicted")
        with self._quality_lock:
            if self._quality_predictor is None:
                from gateway.codec.cadc.quality_predictor import QualityPredictor

                self._quality_predictor = QualityPredictor.for_codec(self, self.bundle_path)
            return self._quality_predictor

    def predict_quality(self, image: np.ndarray, bitstream: bytes) -> QualityEstimate:
        """The ground's expected MS-SSIM and PSNR of ``bitstream``, from x̂_aux and the bundle's calibration.

        Without a usable calibration x̂_aux's own quality stands in (the
        estimate's ``source`` is ``aux`` and its note says why); see
        :mod:`gateway.codec.cadc.quality_predictor`.
        """
        with _threads(self.encoder_threads if self.device.type == "cpu" else None):
            return self.quality_predictor().predict(image, bitstream)

    # -- decoder ---------------------------------------------------------------------------------
    def _grid(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((h_y, w_y), (h_z, w_z)) for a coded image size."""
        mult = self.model.config.codec.pad_multiple
        ph, pw = -(-height // mult) * mult, -(-width // mult) * mult
        d = self.model.config.codec.y_downsample
        return (ph // d, pw // d), (ph // (4 * d), pw // (4 * d))

    def decode_symbols(self, data: bytes, partial: bool = False) -> tuple[bitstream.Header, _Symbols]:
        """Parse, entropy-decode and verify a bitstream (no image synthesis).

        With ``partial``, ``data`` may be any prefix of a v2 stream that holds
        ẑ: the symbols of the quadtree steps it holds completely are returned
        (``steps`` says how many; the rest of ``q`` is 0).  Otherwise the
        stream must be complete.
        """
        # The original size may exceed max_pixels (an oversize picture coded downscaled): only the coded size
        # is synthesised; the original is bounded by the format's limit.
        header, payload = bitstream.unpack(data)
        if header.codec_id != self.codec_id:
            raise BitstreamError(f"bitstream is for codec '{header.codec_name}', not cadc")
        if header.model_id != self.model_id:
            raise ModelMismatch(
                f"bitstream was made by model {header.model_id:04x} but the loaded bundle is {self.model_id:04x}; "
                "decode it with the bundle that encoded it"
            )
        cw, ch = header.coded_size
        if cw * ch > self.max_pixels:
            raise BitstreamError(f"coded size {cw}x{ch} exceeds the {self.max_pixels}-pixel limit")
        (hy, wy), (hz, wz) = self._grid(cw, ch)
        n, cz = self.model.config.codec.y_channels, self.model.config.codec.z_channels
        n_symbols = n * hy * wy + cz * hz * wz
        if len(payload) > _MAX_BYTES_PER_SYMBOL * n_symbols + 64:
            raise BitstreamError(f"payload of {len(payload)} bytes is too long for a {cw}x{ch} CADC image")
        if header.version == 1:
            if partial:
                raise BitstreamError("a format-1 CADC bitstream has no layer table; only complete streams decode")
            table, stream, steps, color = None, payload, 4, b""
        else:
            table, color, offset = split_payload(payload, header.version)
            stream = payload[offset:]
            total = table.ends()[-1]
            if len(stream) > total or (len(stream) < total and not partial):
                raise BitstreamError(
                    f"CADC stream holds {len(stream)} bytes but its layer table says {total}: the bitstream is "
                    f"{'truncated' if len(stream) < total else 'corrupt'} (decode a prefix with partial=True)"
                )
            layers = table.layers_in(len(stream))
            if layers == 0:
                raise BitstreamError(
                    f"a CADC preview needs the first {bitstream.HEADER_SIZE + offset + table.sizes[0]} bytes "
                    f"(header, layer table and hyperprior); got {len(data)}"
                )
            steps = layers - 1
        delta = self.delta(header.delta_code)
        groups = self.model.config.codec.context_groups
        reader = SymbolReader(stream)
        z = reader.read_categorical(self._z_probabilities((cz, hz, wz))) - self.z_range
        z = z.reshape(cz, hz, wz).astype(np.int32)
        if header.version >= 2 and header.check_value(_symbol_bytes(z) + color) != header.checksum:
            raise ChecksumMismatch(
                "header fields, colour layer or hyperprior symbols do not match the header checksum: the bitstream "
                "is corrupt or this decoder's model differs from the encoder's"
            )
        color_layer = decode_color_layer(color, cw, ch) if color else None
        q = np.zeros((n, hy, wy), dtype=np.int32)
        with torch.no_grad(), _one_thread():
            hyper = self._hyper(z)
            y_known = np.zeros((n, hy, wy), dtype=np.float64)
            for step in range(steps):
                raw = self._step_params(hyper, torch.from_numpy(y_known)[None] if step else None, step)
                symbols = reader.read_gaussian(*self._coding_params(*raw, delta), self.y_range)
                if table is not None and crc8(_symbol_bytes(symbols)) != table.step_checks[step]:
                    raise ChecksumMismatch(
                        f"quadtree step {step} does not match its check byte: the bitstream is corrupt or this "
                        "decoder's model differs from the encoder's"
                    )
                set_step_elements(q, step, groups, symbols)
                set_step_elements(y_known, step, groups, symbols.astype(np.float64) * delta)
            partial_mask = None
            if table is not None and steps < 4:
                spare = (len(stream) - table.ends()[steps]) * 8 - _PARTIAL_STEP_MARGIN_BITS
                if spare > 0:
                    raw = self._step_params(hyper, torch.from_numpy(y_known)[None] if steps else None, steps)
                    partial_mask = self._read_cut_step(reader, q, steps, self._coding_params(*raw, delta), spare)
        sym = _Symbols(z=z.astype(np.int32), q=q, steps=steps, partial=partial_mask, color=color_layer)
        if header.version == 1 and header.check_value(_symbol_bytes(sym.z) + _symbol_bytes(sym.q)) != header.checksum:
            raise ChecksumMismatch(
                "decoded symbols do not match the header checksum: the bitstream is corrupt or this decoder's "
                "model differs from the encoder's"
            )
        return header, sym

    def _read_cut_step(self, reader: SymbolReader, q: np.ndarray, step: int,
                       params: tuple[np.ndarray, np.ndarray], spare_bits: float) -> np.ndarray | None:
        """The first symbols of quadtree ``step`` that a prefix cut inside it holds, written into ``q``.

        Reads in chunks until the data runs out (a read past it fails), then
        keeps the symbols whose information content, summed from the step's
        start, fits in ``spare_bits`` (the bytes received past the step's
        start, less a margin): a range coder has decoded those exactly. The
        step's check byte covers the whole step, so these are trusted on that
        bound alone; they only ever shape a preview. Returns the mask of the
        kept elements (None: none).
        """
        mean, std = params
        got: list[np.ndarray] = []
        bits = 0.0
        for start in range(0, len(mean), _PARTIAL_STEP_CHUNK):
            stop = start + _PARTIAL_STEP_CHUNK
            try:
                got.append(reader.read_gaussian(mean[start:stop], std[start:stop], self.y_range))
            except BitstreamError:
                break
            bits += _gaussian_bits(got[-1], mean[start:stop], std[start:stop])
            if bits > spare_bits:  # everything further is past what can be trusted
                break
        if not got:
            return None
        symbols = np.concatenate(got)
        cum = np.cumsum(_gaussian_symbol_bits(symbols, mean[: len(symbols)], std[: len(symbols)]))
        kept = int(np.searchsorted(cum, spare_bits, side="right"))
        if kept == 0:
            return None
        groups = self.model.config.codec.context_groups
        values = np.zeros(len(mean), dtype=np.int32)
        values[:kept] = symbols[:kept]
        known = np.zeros(len(mean), dtype=np.float32)
        known[:kept] = 1.0
        set_step_elements(q, step, groups, values)
        mask = np.zeros(q.shape, dtype=np.float32)
        set_step_elements(mask, step, groups, known)
        return mask

    def prefix_layers(self, data: bytes) -> tuple[int, int]:
        """(layers of ẑ and ŷ's steps a prefix holds completely, 5), from the header and the layer table only.

        A format-1 stream (no table) or a prefix cut inside the table holds
        no decodable layer: (0, 5). Raises BitstreamError for a bad header.
        """
        header, payload = bitstream.unpack(data)
        if header.codec_id != self.codec_id or header.version == 1:
            return 0, LAYERS
        try:
            table, _, offset = split_payload(payload, header.version)
        except BitstreamError:
            return 0, LAYERS
        return table.layers_in(len(payload) - offset), LAYERS

    @torch.no_grad()
    def decode_with_info(self, data: bytes, partial: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode to an HxWx3 uint8 array at the original size, plus caption, λ, Δ, layers and timings (ms).

        ``partial``: ``data`` may be a prefix of the stream (see
        :meth:`decode_symbols`); the quadtree steps it lacks take the entropy
        model's means, and ``info["complete"]`` says whether it had them all.
        The synthesis (g_s, UNet, VAE) runs on :attr:`decoder_threads`
        threads, so the picture does not depend on the caller's torch thread count.
        """
        if not self.decodes:
            raise CodecError("this CADC codec was loaded for encoding only (the sender's light load); "
                             "load the whole bundle to decode (CADCCodec.from_bundle without encoder_only)")
        with _threads(self.decoder_threads if self.device.type == "cpu" else None):
            return self._decode_with_info(data, partial)

    def _pretrained_precision(self) -> Any:
        """Autocast to :attr:`precision` around the pretrained parts (a no-op in float32, e.g. on the CPU).

        g_s, the auxiliary decoder and the one-step update itself stay in
        float32: ``l_T[:k]`` is divided by √ᾱ after the UNet, so only the
        UNet's own arithmetic runs in half precision.
        """
        return torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision != torch.float32)

    def _decode_with_info(self, data: bytes, partial: bool) -> tuple[np.ndarray, dict[str, Any]]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        header, sym = self.decode_symbols(data, partial=partial)
        t1 = time.perf_counter()
        timings["entropy_decode"] = (t1 - t0) * 1e3
        model = self.model
        lam, delta = self.lam(header.lam_code), self.delta(header.delta_code)
        cw, ch = header.coded_size
        _, inv_gain = model.gains(torch.tensor([lam], device=self.device))
        y_hat = torch.from_numpy(sym.q).float().unsqueeze(0).to(self.device) * delta
        if sym.steps < 4:
            hyper = model.h_s(torch.from_numpy(sym.z).float().unsqueeze(0).to(self.device))
            partial = None if sym.partial is None else torch.from_numpy(sym.partial).unsqueeze(0).to(self.device)
            y_hat = model.complete_latent(hyper, y_hat, torch.tensor([sym.steps]), partial)
        # g_s, x̂_aux, text, UNet, VAE decoder: in tiles for a large picture, untiled for one that fits a tile.
        synthesis = TiledSynthesis(model, y_hat, inv_gain, (cw, ch), self.tiles, self._pretrained_precision)
        image, captions = synthesis.run(timings)
        if sym.color is not None:
            t2 = time.perf_counter()
            image = apply_color_layer(image, sym.color)
            timings["color_layer"] = (time.perf_counter() - t2) * 1e3
        if (cw, ch) != (header.width, header.height):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((header.width, header.height), Image.BICUBIC))
        timings["total"] = (time.perf_counter() - t0) * 1e3
        info = {
            "caption": captions[0] if captions else None,
            "lam": lam,
            "delta": delta,
            "lam_code": header.lam_code,
            "delta_code": header.delta_code,
            "scale_code": header.scale_code,
            "model_id": f"{header.model_id:04x}",
            "coded_size": (cw, ch),
            "bytes": len(data),
            "complete": sym.steps == 4,
            "layers": 1 + sym.steps,
            "layers_total": LAYERS,
            "color_layer": None if sym.color is None else {"bytes": sym.color.size, **vars(sym.color.settings)},
            # Of the step a prefix was cut inside: the share of its symbols the preview has.
            "partial_layer": None if sym.partial is None else round(
                float(sym.partial.sum()) / max(1, step_elements(sym.partial, sym.steps,
                                                                  model.config.codec.context_groups).size), 4),
            "tiles": {"unet": synthesis.unet_grid, "vae": synthesis.vae_grid},
            "timings_ms": timings,
        }
        return image, info

    def decode(self, bitstream_bytes: bytes) -> np.ndarray:
        """Decode a complete bitstream to an HxWx3 uint8 RGB array at the original size."""
        return self.decode_with_info(bitstream_bytes)[0]
