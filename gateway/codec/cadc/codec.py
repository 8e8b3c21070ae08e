"""CADCCodec: the CADC model behind the gateway's :class:`Codec` interface.

``analyze`` runs ``g_a`` once per image; ``encode`` does the λ gain, the
hyperprior, UGAQ and the range coding for one knob setting (milliseconds), so
the rate controller can search λ and Δ cheaply.

Bitstream payload (after the 12-byte header of :mod:`gateway.codec.bitstream`):
one range-coded stream holding ẑ then the four quadtree groups of ŷ; every
size is derived from the header, so the payload has no length fields.  The
header checksum is the CRC-16 of all decoded integer symbols, so a decoder
whose probability models differ from the encoder's fails loudly
(:class:`ChecksumMismatch`) instead of producing a wrong picture.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gateway.codec import bitstream
from gateway.codec.base import Codec, Knobs, SearchSpace
from gateway.codec.cadc.entropy_models import SCALE_TABLE, quantize_means, quantize_scales
from gateway.codec.cadc.coding import SymbolReader, SymbolWriter
from gateway.codec.cadc.knob_values import delta_from_code, lam_from_code
from gateway.codec.cadc.model import CADCModel, quadtree_masks
from gateway.errors import BitstreamError, BundleError, ChecksumMismatch, CodecError, ModelMismatch

#: Generous bound on payload bytes per coded symbol; anything longer is not a CADC stream.
_MAX_BYTES_PER_SYMBOL = 4


@dataclass
class CADCAnalysis:
    """What :meth:`CADCCodec.analyze` computes once per image."""

    y: torch.Tensor  # [1, N, h, w] g_a output (padded image)
    x: torch.Tensor  # [1, 3, H, W] the image in [0, 1]
    width: int
    height: int


@dataclass
class _Symbols:
    z: np.ndarray  # int32 [Cz, hz, wz]
    q: np.ndarray  # int32 [N, h, w]


class CADCCodec(Codec):
    """The content-adaptive diffusion codec (codec id 1)."""

    name = "cadc"
    codec_id = bitstream.CODEC_IDS["cadc"]

    def __init__(self, model: CADCModel, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        cfg = model.config.codec
        self.z_range = cfg.z_symbol_range
        self.y_range = cfg.y_symbol_range
        self.max_pixels = min(cfg.max_pixels, bitstream.MAX_PIXELS)
        # Everything that selects a probability model runs in float64 on the CPU from integer
        # inputs, so encoder and decoder compute bit-identical parameters.
        self._param_nets = nn.ModuleDict({"h_s": copy.deepcopy(model.h_s), "context": copy.deepcopy(model.context)})
        self._param_nets = self._param_nets.to("cpu", torch.float64).eval()
        tables = model.entropy_bottleneck.to("cpu").integer_tables(self.z_range)
        model.entropy_bottleneck.to(self.device)
        self._z_tables = tables  # [Cz, 2R+1]

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "CADCCodec":
        """Load a bundle folder (None: the embedded ``cadc-tiny`` bundle)."""
        from gateway.codec.cadc.bundle import CODEC_WEIGHTS, load_model
        from gateway.paths import bundle_dir

        if path is None:
            path = bundle_dir("cadc-tiny")
            if not (Path(path) / CODEC_WEIGHTS).is_file():
                raise BundleError(
                    f"the embedded cadc-tiny bundle at {path} has no weights yet; train it with tools/train.py, "
                    "or pass a bundle folder (make a random-init one with: satgw bundle create "
                    "configs/models/cadc-tiny.yaml OUT)"
                )
        return cls(load_model(path, device=device), device=device)

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
        """λ codes from most bits to fewest; Δ codes from Δ≈1 upwards (wider bins save bytes)."""
        from gateway.codec.cadc.knob_values import code_from_delta

        d1 = code_from_delta(1.0, self.model.delta_range)
        delta_codes = tuple(sorted({int(round(d1 + (255 - d1) * i / 4)) for i in range(5)}))
        return SearchSpace(lam_codes=tuple(range(255, -1, -15)), delta_codes=delta_codes)

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
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div(255.0)
        x = x.to(self.device)
        with torch.no_grad():
            y = self.model.analyze(x)
        return CADCAnalysis(y=y, x=x, width=w, height=h)

    @torch.no_grad()
    def _quantize(self, analysis: CADCAnalysis, knobs: Knobs) -> _Symbols:
        """Gain, hyperprior and UGAQ for one knob setting: the integer symbols."""
        model = self.model
        lam = torch.tensor([self.lam(knobs.lam_code)], device=self.device)
        delta = self.delta(knobs.delta_code)
        gain, _ = model.gains(lam)
        y_g = analysis.y * gain[:, :, None, None]
        z_int = torch.round(model.h_a(y_g)).clamp(-self.z_range, self.z_range)
        m = model.ugaq_scale(y_g, z_int)
        q = torch.round(y_g / m / delta).clamp(-self.y_range, self.y_range - 1)
        return _Symbols(z=z_int[0].cpu().numpy().astype(np.int32), q=q[0].cpu().numpy().astype(np.int32))

    def _group_params(self, hyper: torch.Tensor, q: torch.Tensor, step: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
        """Quantized mean/std (bin units) of quadtree group ``step``, from float64 nets and known groups."""
        masks = quadtree_masks(*q.shape[-2:]).to(torch.float64)
        known = masks[:step].sum(0) if step else None
        y_known = q * delta * known if step else None
        mean, scale = self._param_nets["context"](step, hyper, y_known)
        sel = masks[step, 0, 0].bool()
        mean_g = mean[0][:, sel].numpy() / delta
        scale_g = scale[0][:, sel].numpy() / delta
        return quantize_means(mean_g, self.y_range - 1), SCALE_TABLE[quantize_scales(scale_g)]

    @staticmethod
    def _checksum(sym: _Symbols) -> int:
        return bitstream.crc16(sym.z.astype(">i2").tobytes() + sym.q.astype(">i2").tobytes())

    def _z_probabilities(self, z_shape: tuple[int, int, int]) -> np.ndarray:
        c, h, w = z_shape
        return np.repeat(self._z_tables, h * w, axis=0)

    def encode(self, analysis: CADCAnalysis, knobs: Knobs, original_size: tuple[int, int]) -> bytes:
        """Bitstream (header + range-coded ẑ, ŷ) for one (λ, Δ) setting."""
        ow, oh = original_size
        if bitstream.scaled_size(ow, oh, knobs.scale_code) != (analysis.width, analysis.height):
            raise CodecError(
                f"analysis is {analysis.width}x{analysis.height} but original {ow}x{oh} at scale code "
                f"{knobs.scale_code} is {bitstream.scaled_size(ow, oh, knobs.scale_code)}; analyze the downscaled image"
            )
        delta = self.delta(knobs.delta_code)
        sym = self._quantize(analysis, knobs)
        writer = SymbolWriter()
        writer.write_categorical(sym.z.ravel() + self.z_range, self._z_probabilities(sym.z.shape))
        with torch.no_grad():
            hyper = self._param_nets["h_s"](torch.from_numpy(sym.z).double().unsqueeze(0))
            q = torch.from_numpy(sym.q).double().unsqueeze(0)
            masks = quadtree_masks(*q.shape[-2:])
            for step in range(4):
                means, stds = self._group_params(hyper, q, step, delta)
                writer.write_gaussian(sym.q[:, masks[step, 0, 0].bool().numpy()], means, stds, self.y_range)
        header = bitstream.Header(
            codec_id=self.codec_id,
            model_id=self.model_id,
            width=ow,
            height=oh,
            scale_code=knobs.scale_code,
            lam_code=knobs.lam_code,
            delta_code=knobs.delta_code,
            checksum=self._checksum(sym),
        )
        return bitstream.pack(header, writer.finish())

    def estimate_distortion(self, analysis: CADCAnalysis, knobs: Knobs) -> float:
        """MSE (pixels in [0, 1]) of the ADGIC auxiliary reconstruction: a cheap proxy of the final distortion.

        Runs g_s and the auxiliary decoder only (no UNet, no VAE).  Returns
        NaN when ADGIC is off.
        """
        if self.model.aux_decoder is None:
            return float("nan")
        sym = self._quantize(analysis, knobs)
        with torch.no_grad():
            lam = torch.tensor([self.lam(knobs.lam_code)], device=self.device)
            _, inv_gain = self.model.gains(lam)
            y_hat = torch.from_numpy(sym.q).float().unsqueeze(0).to(self.device) * self.delta(knobs.delta_code)
            l_t = self.model.synthesize_latent(y_hat, inv_gain)
            x_aux = self.model.aux_decoder(l_t[:, :4])[..., : analysis.height, : analysis.width].clamp(0, 1)
            return float(torch.mean((x_aux - analysis.x) ** 2))

    # -- decoder ---------------------------------------------------------------------------------
    def _grid(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((h_y, w_y), (h_z, w_z)) for a coded image size."""
        mult = self.model.config.codec.pad_multiple
        ph, pw = -(-height // mult) * mult, -(-width // mult) * mult
        d = self.model.config.codec.y_downsample
        return (ph // d, pw // d), (ph // (4 * d), pw // (4 * d))

    def decode_symbols(self, data: bytes) -> tuple[bitstream.Header, _Symbols]:
        """Parse, entropy-decode and checksum-verify a bitstream (no image synthesis)."""
        header, payload = bitstream.unpack(data, max_pixels=self.max_pixels)
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
        delta = self.delta(header.delta_code)
        reader = SymbolReader(payload)
        z = reader.read_categorical(self._z_probabilities((cz, hz, wz))) - self.z_range
        z = z.reshape(cz, hz, wz)
        q = np.zeros((n, hy, wy), dtype=np.int32)
        with torch.no_grad():
            hyper = self._param_nets["h_s"](torch.from_numpy(z).double().unsqueeze(0))
            masks = quadtree_masks(hy, wy)
            q_t = torch.zeros((1, n, hy, wy), dtype=torch.float64)
            for step in range(4):
                means, stds = self._group_params(hyper, q_t, step, delta)
                sel = masks[step, 0, 0].bool().numpy()
                q[:, sel] = reader.read_gaussian(means, stds, self.y_range).reshape(n, -1)
                q_t = torch.from_numpy(q).double().unsqueeze(0)
        sym = _Symbols(z=z.astype(np.int32), q=q)
        if self._checksum(sym) != header.checksum:
            raise ChecksumMismatch(
                "decoded symbols do not match the header checksum: the bitstream is corrupt or this decoder's "
                "model differs from the encoder's"
            )
        return header, sym

    @torch.no_grad()
    def decode_with_info(self, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode to an HxWx3 uint8 array at the original size, plus caption, λ, Δ and per-stage timings (ms)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        header, sym = self.decode_symbols(data)
        t1 = time.perf_counter()
        timings["entropy_decode"] = (t1 - t0) * 1e3
        model = self.model
        lam, delta = self.lam(header.lam_code), self.delta(header.delta_code)
        cw, ch = header.coded_size
        _, inv_gain = model.gains(torch.tensor([lam], device=self.device))
        y_hat = torch.from_numpy(sym.q).float().unsqueeze(0).to(self.device) * delta
        l_t = model.synthesize_latent(y_hat, inv_gain)
        t2 = time.perf_counter()
        timings["g_s"] = (t2 - t1) * 1e3
        x_aux = model.aux_decoder(l_t[:, :4])[..., :ch, :cw] if model.aux_decoder is not None else None
        t3 = time.perf_counter()
        timings["aux_decoder"] = (t3 - t2) * 1e3
        text, captions = model.text(x_aux, 1, l_t.device, l_t.dtype)
        t4 = time.perf_counter()
        timings["text"] = (t4 - t3) * 1e3
        l0 = model.denoise(l_t, text)
        t5 = time.perf_counter()
        timings["unet"] = (t5 - t4) * 1e3
        x_hat = model.vae_decode(l0)[..., :ch, :cw]
        t6 = time.perf_counter()
        timings["vae_decode"] = (t6 - t5) * 1e3
        image = (x_hat[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
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
            "timings_ms": timings,
        }
        return image, info

    def decode(self, bitstream_bytes: bytes) -> np.ndarray:
        """Decode a complete bitstream to an HxWx3 uint8 RGB array at the original size."""
        return self.decode_with_info(bitstream_bytes)[0]
