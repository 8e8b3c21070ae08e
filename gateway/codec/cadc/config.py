"""The CADC model config: one YAML file describes every part of a model.

A config has a ``codec`` section (the codec's own networks and switches) and
one section per diffusers / transformers part (``unet``, ``vae``,
``scheduler``, ``text_encoder``, ``captioner``).  Each part section is the
keyword arguments of that library's config class, used for random init; the
optional ``sources`` section maps a part name to a local ``save_pretrained``
folder to copy it from instead (how the full SD-Turbo model is assembled).

Unknown keys are refused so that a typo does not silently fall back to a
default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import CodecError, ConfigError

TEXT_MODES = ("caption", "fixed", "none")
OVERSIZE_POLICIES = ("downscale", "refuse")
VAE_TYPES = ("tiny", "kl")
PART_NAMES = ("unet", "vae", "scheduler", "text_encoder", "tokenizer", "captioner")
#: g_a's stride-2 stages per y_downsample (g_s then upsamples to the VAE latent's 1/8).
_STRIDE_STAGES = {16: 4, 32: 5, 64: 6}

#: The fixed prompt suffix of BFATC [4.3].
C_FIX = "A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, and natural lighting"


@dataclass
class CodecSection:
    """Sizes and switches of the codec's own networks (everything in ``codec.safetensors``)."""

    y_channels: int = 64
    # image side / y side: 16, 32 or 64 (StableCodec uses 64; 16 gives g_s detail finer than 32 px to place)
    y_downsample: int = 32
    z_channels: int = 32  # z is at 1/4 of y's side
    analysis_widths: list[int] = field(default_factory=lambda: [24, 32, 48, 64])
    hyper_width: int = 64
    latent_channels: int = 16  # C: channels of l_T, the UNet input
    synthesis_width: int = 64
    aux_widths: list[int] = field(default_factory=lambda: [32, 16, 16])
    ugaq_width: int = 32
    context_width: int = 64
    #: Kernel of the quadtree context convs (5: the first bundles; 3 is enough once channel groups give
    #: same-position context, and keeps the float64 coding-time nets cheap).
    context_kernel: int = 5
    #: Channel groups of ŷ whose spatial phase rotates across the 4 quadtree steps (DCVC-DC [35]): 4 gives
    #: every step both spatial and cross-channel context; 1 is the spatial-only split of the first bundles.
    context_groups: int = 1
    #: Residual blocks added at the low-resolution ends of g_a (after y) and g_s (after ŷ and before l_T).
    transform_blocks: int = 0
    #: Residual blocks after each of g_a's stride-2 stages but the last (one count per analysis_widths
    #: entry; empty: none).  Sender-side depth: the decoder's weights and the bitstream do not change.
    analysis_stage_blocks: list[int] = field(default_factory=list)
    #: UGAQ reads the λ-gained y (first bundles) or the un-gained y, so m cannot simply undo the gain.
    ugaq_gained_input: bool = True
    #: Upper bound of UGAQ's m (m in [1, max]); 0: unbounded ``1 + softplus`` (first bundles).
    ugaq_max_scale: float = 0.0
    #: How a fresh UGAQ network starts (a bundle's trained weights replace it): 0, PyTorch's random init
    #: (m scattered around the middle of its range); a value m0 > 1, its output conv zeroed so m = m0
    #: everywhere. m0 near 1 starts UGAQ as "no UGAQ", so training moves m away from 1 only where that pays
    #: (the seven-seed ablation found a randomly started UGAQ seed-fragile).
    ugaq_init_scale: float = 0.0
    #: A low-resolution colour correction after the VAE decoder (from l0 and the decoder's 8x8 block means):
    #: the small VAE's group norms lose absolute colour, which block-mean losses and ΔE punish.
    color_correction: bool = False
    color_width: int = 32
    #: The sender's colour layer (color_layer.py): rows {min_lam, luma_cell, chroma_cell, luma_step,
    #: chroma_step}, the finest whose min_lam the coded λ reaches; empty: no colour layer.  Encoder-side
    #: policy only: a layer describes itself, so the decoder reads any.
    color_layer: list[dict[str, Any]] = field(default_factory=list)
    #: Initial spread of the λ gains: log-gains start on a ramp over ±ln(gain_init_span).
    gain_init_span: float = 2.0
    lam_range: list[float] = field(default_factory=lambda: [0.25, 64.0])
    lam_levels: int = 6
    delta_range: list[float] = field(default_factory=lambda: [0.5, 4.0])
    ugaq: bool = True
    adgic: bool = True
    bfatc: bool = False
    text_mode: str = "none"
    null_text_tokens: int = 4
    caption_max_tokens: int = 20
    timestep: int | None = None  # None: what the scheduler picks for one trailing step (999)
    z_symbol_range: int = 48  # z symbols are clipped to [-R, R]
    y_symbol_range: int = 1024  # y symbols are clipped to [-R, R - 1]
    max_pixels: int = 16_000_000  # largest coded image the decoder accepts
    #: A picture above max_pixels: "downscale" (the rate controller codes it at the largest scale under
    #: the limit; the decoder restores the original size) or "refuse" (a clear error).  docs/tiling.md.
    oversize: str = "downscale"
    #: Decoder tiles, in latent positions (1/8 of the image side): the one-step UNet and the VAE decoder run
    #: on overlapping tiles of at most this side, blended across the overlap (tiled_synthesis.py).  A picture
    #: whose latent fits one tile decodes untiled, as before tiling; 0: never tile.  Chosen by measurement
    #: (docs/tiling.md): 96 keeps a Kodak-size picture (768x512, either way up) in one tile.
    unet_tile: int = 96
    unet_tile_overlap: int = 16
    vae_tile: int = 96
    vae_tile_overlap: int = 8
    #: A latent whose sides both fit this decodes in one VAE tile even when it exceeds vae_tile (0: vae_tile).
    #: Lets a large picture use smaller VAE tiles, which are faster per pixel (cache), while a Kodak-size one
    #: keeps the untiled decode.
    vae_single_tile: int = 0
    #: Encoder: g_a's high-resolution stages run on tiles of at most this many pixels a side, with enough
    #: context that y is the same as untiled (tiled_analysis.py); 0: never tile.
    analysis_tile: int = 1024

    def validate(self) -> None:
        if self.y_downsample not in _STRIDE_STAGES:
            raise ConfigError(f"codec.y_downsample must be one of {sorted(_STRIDE_STAGES)}, got {self.y_downsample}")
        if len(self.analysis_widths) != self.n_down - 1:
            raise ConfigError(
                f"codec.analysis_widths needs {self.n_down - 1} entries for y_downsample={self.y_downsample} "
                f"(one per stride-2 stage before the last), got {len(self.analysis_widths)}"
            )
        if len(self.aux_widths) != 3:
            raise ConfigError(f"codec.aux_widths needs 3 entries (one per x2 stage of the aux decoder), got {self.aux_widths}")
        if self.text_mode not in TEXT_MODES:
            raise ConfigError(f"codec.text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.bfatc and self.text_mode != "caption":
            raise ConfigError("codec.bfatc=true needs codec.text_mode: caption (BFATC captions x_aux)")
        if self.text_mode == "caption" and not self.bfatc:
            raise ConfigError("codec.text_mode: caption needs codec.bfatc=true; use 'fixed' or 'none' with BFATC off")
        if self.bfatc and not self.adgic:
            raise ConfigError("codec.bfatc=true needs codec.adgic=true: the caption is made from x_aux")
        for name in ("lam_range", "delta_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"codec.{name} must be [min, max] with 0 < min < max, got {lo_hi}")
        if self.lam_levels < 2:
            raise ConfigError(f"codec.lam_levels must be at least 2, got {self.lam_levels}")
        if self.null_text_tokens < 1:
            raise ConfigError("codec.null_text_tokens must be at least 1")
        if self.context_groups not in (1, 2, 4) or self.y_channels % self.context_groups:
            raise ConfigError(
                f"codec.context_groups must be 1, 2 or 4 and divide y_channels={self.y_channels}, got {self.context_groups}"
            )
        if self.context_kernel not in (1, 3, 5, 7):
            raise ConfigError(f"codec.context_kernel must be 1, 3, 5 or 7, got {self.context_kernel}")
        if self.transform_blocks < 0:
            raise ConfigError(f"codec.transform_blocks must be >= 0, got {self.transform_blocks}")
        stage_blocks = self.analysis_stage_blocks
        if stage_blocks and (len(stage_blocks) != len(self.analysis_widths) or min(stage_blocks) < 0):
            raise ConfigError(
                f"codec.analysis_stage_blocks needs one count >= 0 per analysis_widths entry "
                f"({len(self.analysis_widths)}), or none; got {stage_blocks}"
            )
        if self.ugaq_max_scale and self.ugaq_max_scale <= 1.0:
            raise ConfigError(f"codec.ugaq_max_scale must be 0 (unbounded) or above 1, got {self.ugaq_max_scale}")
        init, top = self.ugaq_init_scale, self.ugaq_max_scale
        if init and (init <= 1.0 or (top > 1.0 and init >= top)):
            raise ConfigError(f"codec.ugaq_init_scale must be 0 (random init) or strictly between 1 and "
                              f"ugaq_max_scale ({top or 'unbounded'}), got {init}")
        if self.gain_init_span < 1.0:
            raise ConfigError(f"codec.gain_init_span must be at least 1, got {self.gain_init_span}")
        if self.oversize not in OVERSIZE_POLICIES:
            raise ConfigError(f"codec.oversize must be one of {OVERSIZE_POLICIES}, got {self.oversize!r}")
        # UNet tiles start on the UNet's and g_s's grids (multiples of 4 or 8; tiled_synthesis checks the model's).
        for tile, overlap, multiple in (("unet_tile", "unet_tile_overlap", 8), ("vae_tile", "vae_tile_overlap", 1)):
            t, o = getattr(self, tile), getattr(self, overlap)
            if t and (t % 8 or t < 16):
                raise ConfigError(f"codec.{tile} must be 0 (no tiling) or a multiple of 8 from 16 up, got {t}")
            if o < 0 or o % multiple or (t and o > t // 2):
                raise ConfigError(
                    f"codec.{overlap} must be a multiple of {multiple} from 0 to half of codec.{tile}={t}, got {o}"
                )
        if self.vae_single_tile and self.vae_single_tile < self.vae_tile:
            raise ConfigError(
                f"codec.vae_single_tile must be 0 or at least codec.vae_tile={self.vae_tile}, got {self.vae_single_tile}"
            )
        from gateway.codec.cadc.color_layer import ColorLayerPolicy  # numpy/torch: not needed to read a config

        try:
            ColorLayerPolicy.from_config(self.color_layer)
        except CodecError as exc:
            raise ConfigError(f"codec.color_layer: {exc}") from exc
        if self.analysis_tile and (self.analysis_tile % 16 or self.analysis_tile < 256):
            raise ConfigError(
                f"codec.analysis_tile must be 0 (no tiling) or a multiple of 16 from 256 up, got {self.analysis_tile}"
            )

    @property
    def n_down(self) -> int:
        """Number of stride-2 stages of g_a."""
        return _STRIDE_STAGES[self.y_downsample]

    @property
    def pad_multiple(self) -> int:
        """Images are padded to a multiple of this (z's stride)."""
        return self.y_downsample * 4


@dataclass
class CADCConfig:
    """A whole CADC model: codec networks plus the diffusers/transformers parts."""

    name: str = "cadc"
    codec: CodecSection = field(default_factory=CodecSection)
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)  # {"type": "tiny"|"kl", **diffusers config}
    scheduler: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)  # CLIPTextConfig kwargs
    captioner: dict[str, Any] = field(default_factory=dict)  # BlipConfig kwargs
    sources: dict[str, str] = field(default_factory=dict)  # part -> local save_pretrained folder
    description: str = ""

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> "CADCConfig":
        """Build and validate a config from a plain dict (as read from YAML)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: a CADC config must be a mapping, got {type(data).__name__}")
        data = copy.deepcopy(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown keys {unknown}; allowed top-level keys are {sorted(known)}")
        codec_data = data.pop("codec", {}) or {}
        codec_known = {f.name for f in fields(CodecSection)}
        unknown = sorted(set(codec_data) - codec_known)
        if unknown:
            raise ConfigError(f"{origin}: unknown keys in codec: {unknown}; allowed: {sorted(codec_known)}")
        for key in ("unet", "vae", "scheduler", "text_encoder", "captioner", "sources"):
            if data.get(key) is None:
                data.pop(key, None)
            elif not isinstance(data[key], dict):
                raise ConfigError(f"{origin}: section {key} must be a mapping")
        sources = data.get("sources", {})
        unknown = sorted(set(sources) - set(PART_NAMES))
        if unknown:
            raise ConfigError(f"{origin}: unknown parts in sources: {unknown}; parts are {PART_NAMES}")
        cfg = cls(codec=CodecSection(**codec_data), **data)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CADCConfig":
        """Read and validate a config YAML file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"model config {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"model config {path} is not valid YAML: {exc}") from None
        cfg = cls.from_dict(data, origin=str(path))
        # Relative source folders are relative to the YAML file, so configs can ship next to weights.
        cfg.sources = {k: str((path.parent / Path(v).expanduser())) for k, v in cfg.sources.items()}
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what ``config.yaml`` in a bundle holds)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["codec"] = {f.name: copy.deepcopy(getattr(self.codec, f.name)) for f in fields(CodecSection)}
        for key in ("unet", "vae", "scheduler", "text_encoder", "captioner"):
            if getattr(self, key):
                out[key] = copy.deepcopy(getattr(self, key))
        return out

    def to_yaml(self, path: str | Path) -> None:
        """Write the config (without ``sources``: a bundle holds its parts itself)."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError when parts do not fit together."""
        self.codec.validate()
        vae_type = self.vae.get("type", "tiny")
        if vae_type not in VAE_TYPES:
            raise ConfigError(f"vae.type must be one of {VAE_TYPES}, got {vae_type!r}")
        if "in_channels" in self.unet and self.unet["in_channels"] != self.codec.latent_channels:
            raise ConfigError(
                f"unet.in_channels={self.unet['in_channels']} must equal codec.latent_channels="
                f"{self.codec.latent_channels} (the UNet reads all of l_T); drop the key to have it set for you"
            )
        k = self.vae_latent_channels
        if self.codec.latent_channels < k:
            raise ConfigError(
                f"codec.latent_channels (C={self.codec.latent_channels}) must be at least the VAE's latent channels ({k}): "
                "l_T[:k] is the noisy VAE latent"
            )
        if self.unet.get("out_channels", k) != k:
            raise ConfigError(
                f"unet.out_channels must be {k}: the UNet predicts noise on the {k}-channel VAE latent; drop the key"
            )

    @property
    def vae_latent_channels(self) -> int:
        """k: channels of the VAE latent (l_0), of l_T's primary part and of the UNet output."""
        return int(self.vae.get("latent_channels", 4))

    @property
    def vae_type(self) -> str:
        return self.vae.get("type", "tiny")

    @property
    def uses_text_encoder(self) -> bool:
        return self.codec.text_mode in ("caption", "fixed")

    @property
    def uses_captioner(self) -> bool:
        return self.codec.bfatc

    def unet_kwargs(self) -> dict[str, Any]:
        """UNet2DConditionModel config with the input widened to C channels and k (VAE latent) out."""
        kw = dict(self.unet)
        kw["in_channels"] = self.codec.latent_channels
        kw["out_channels"] = self.vae_latent_channels
        return kw

    def vae_kwargs(self) -> dict[str, Any]:
        kw = dict(self.vae)
        kw.pop("type", None)
        return kw
