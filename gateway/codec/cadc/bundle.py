"""Model bundles: a folder holding everything a CADC model needs, loadable offline.

Layout::

    config.yaml          the CADCConfig
    codec.safetensors    the codec's own weights (g_a, h_a, h_s, gains, f_u,
                         entropy/context nets, g_s, aux decoder, null text)
    unet/ vae/ scheduler/                  diffusers save_pretrained folders
    text_encoder/ tokenizer/ captioner/    transformers folders, when the text mode uses them
    quality_calibration.json               optional: the sender's CADC quality predictor
                                           (gateway/codec/cadc/quality_calibration.py)

Everything loads with ``local_files_only=True``.  The model id written into
every bitstream is a 16-bit hash of the bundle's weight files, so a decoder
with other weights refuses the stream instead of decoding garbage.
:func:`save_bundle` also writes ``manifest.json`` (the model id and the size
of every weight file), so a sender (:func:`load_encoder`) learns the id
without reading the UNet, VAE and text weights it never uses; the whole-model
loader (:func:`load_model`, the ground station) always hashes every file.
Files that are not weights (the quality calibration) are listed in the
manifest under ``files`` with their digest; they are no part of the id.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gateway.codec.cadc.config import CADCConfig
from gateway.codec.cadc.encoder import CADCEncoder, is_encoder_tensor
from gateway.codec.cadc.model import CODEC_MODULES, CODEC_PARAMS, CADCModel
from gateway.codec.image_io import write_atomic
from gateway.errors import BundleError, ConfigError

CONFIG_FILE = "config.yaml"
CODEC_WEIGHTS = "codec.safetensors"
MANIFEST = "manifest.json"
CALIBRATION_FILE = "quality_calibration.json"
#: Files of a bundle that are not weights: listed in the manifest, never part of the model id.
EXTRA_FILES = (CALIBRATION_FILE,)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class PartSpec:
    """One part of a bundle: its folder name and the class that loads it."""

    name: str
    folder: str
    loader: str  # "module:Class"


def required_parts(config: CADCConfig) -> list[PartSpec]:
    """The parts a bundle of this config must contain, beyond config.yaml and codec.safetensors."""
    vae_cls = "AutoencoderTiny" if config.vae_type == "tiny" else "AutoencoderKL"
    parts = [
        PartSpec("unet", "unet", "diffusers:UNet2DConditionModel"),
        PartSpec("vae", "vae", f"diffusers:{vae_cls}"),
        PartSpec("scheduler", "scheduler", "diffusers:DDPMScheduler"),
    ]
    if config.uses_text_encoder:
        parts += [
            PartSpec("text_encoder", "text_encoder", "transformers:CLIPTextModel"),
            PartSpec("tokenizer", "tokenizer", "transformers:CLIPTokenizer"),
        ]
    if config.uses_captioner:
        parts += [
            PartSpec("captioner", "captioner", "transformers:BlipForConditionalGeneration"),
            PartSpec("caption_processor", "captioner", "transformers:BlipProcessor"),
        ]
    return parts


def _load_class(loader: str) -> Any:
    import importlib

    module, cls = loader.split(":")
    return getattr(importlib.import_module(module), cls)


def _part_present(folder: Path, spec: PartSpec) -> bool:
    if not folder.is_dir():
        return False
    if spec.name == "scheduler":
        return (folder / "scheduler_config.json").is_file()
    if spec.name == "caption_processor":
        return (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file()
    if spec.name == "tokenizer":
        return any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))
    return (folder / "config.json").is_file() and any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir())


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers advice printed on every load (e.g. "install accelerate"):
    the daemons log JSON lines and these free-text warnings say nothing about the bundle itself."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)


def load_part(spec: PartSpec, folder: Path) -> Any:
    """Load one part from a local folder; BundleError naming the part and folder on failure."""
    if not _part_present(folder, spec):
        raise BundleError(f"model bundle part '{spec.name}' is missing: nothing loadable in {folder}")
    try:
        with _quiet_libraries():
            obj = _load_class(spec.loader).from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # library errors vary widely; report them as one bundle error
        raise BundleError(f"model bundle part '{spec.name}' in {folder} could not be loaded: {exc}") from exc
    return obj


def _weight_files(root: Path) -> list[Path]:
    """Every weight file of a bundle (*.safetensors, *.bin), sorted: what the model id hashes."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _hash_file(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def model_id_of(path: str | Path) -> int:
    """16-bit id of a bundle: a hash of its weight files (names and contents); never 0."""
    root = Path(path)
    h = hashlib.blake2b(digest_size=8)
    files = _weight_files(root)
    if not files:
        raise BundleError(f"model bundle {root} has no weight files (*.safetensors / *.bin)")
    for f in files:
        h.update(f.relative_to(root).as_posix().encode())
        _hash_file(h, f)
    mid = int.from_bytes(h.digest()[:2], "big")
    return mid or 0xFFFF  # 0 means "no model" (classical codecs)


def _codec_digest(root: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    _hash_file(h, root / CODEC_WEIGHTS)
    return h.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    h = hashlib.blake2b(digest_size=16)
    _hash_file(h, path)
    return {"bytes": path.stat().st_size, "blake2b": h.hexdigest()}


def write_manifest(root: Path, model_id: int) -> None:
    """``manifest.json``: the model id, the byte size of every weight file it was hashed from, a digest
    of ``codec.safetensors`` (the one file a sender reads), and the extra files present (:data:`EXTRA_FILES`)."""
    sizes = {f.relative_to(root).as_posix(): f.stat().st_size for f in _weight_files(root)}
    manifest: dict[str, Any] = {"model_id": f"{model_id:04x}", "codec_blake2b": _codec_digest(root), "weights": sizes}
    extras = {name: _file_entry(root / name) for name in EXTRA_FILES if (root / name).is_file()}
    if extras:
        manifest["files"] = extras
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def record_extra_file(root: Path, name: str) -> bool:
    """List (or refresh) the non-weight file ``name`` in the bundle's manifest; False when there is no manifest.

    The model id and the weight entries stay as they are: an extra file is
    no part of the id.
    """
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    files[name] = _file_entry(root / name)
    manifest["files"] = files
    write_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return True


def bundle_model_id(path: str | Path) -> int:
    """The model id of a bundle, from its manifest when that still describes the files, else hashed.

    The manifest is trusted when ``codec.safetensors`` has the recorded
    digest, every other listed file that is present the recorded size, and
    no unlisted weight file was added; listed files may be absent (a sender's
    copy of a bundle without the decoder's parts).  A stale manifest that
    slips through (a decoder part swapped for one of the same size) gives a
    bitstream the ground station refuses (ModelMismatch), never a wrong
    picture: the ground hashes every file.
    """
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        sizes = {str(k): int(v) for k, v in manifest["weights"].items()}
        mid = int(manifest["model_id"], 16)
        digest = str(manifest["codec_blake2b"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return model_id_of(root)
    present = {f.relative_to(root).as_posix(): f.stat().st_size for f in _weight_files(root)}
    consistent = (
        0 < mid <= 0xFFFF
        and CODEC_WEIGHTS in present
        and all(sizes.get(name) == size for name, size in present.items())
        and _codec_digest(root) == digest
    )
    return mid if consistent else model_id_of(root)


def codec_state_dict(model: CADCModel) -> dict[str, torch.Tensor]:
    """The tensors that go into codec.safetensors."""
    state = {}
    full = model.state_dict()
    for key, value in full.items():
        top = key.split(".")[0]
        if top in CODEC_MODULES or key in CODEC_PARAMS:
            state[key] = value.detach().cpu().contiguous()
    return state


def save_bundle(model: CADCModel, out_dir: str | Path) -> Path:
    """Write ``model`` as a bundle folder; sets ``model.model_id``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.to_yaml(out / CONFIG_FILE)
    save_file(codec_state_dict(model), str(out / CODEC_WEIGHTS))
    model.unet.save_pretrained(str(out / "unet"))
    model.vae.save_pretrained(str(out / "vae"))
    model.scheduler.save_pretrained(str(out / "scheduler"))
    text = model.text
    if model.config.uses_text_encoder:
        if text.tokenizer is None:
            raise BundleError(
                f"text mode '{model.config.codec.text_mode}' needs a tokenizer; give the config "
                "sources.tokenizer (a local CLIPTokenizer folder)"
            )
        text.text_encoder.save_pretrained(str(out / "text_encoder"))
        text.tokenizer.save_pretrained(str(out / "tokenizer"))
    if model.config.uses_captioner:
        if text.caption_processor is None:
            raise BundleError("BFATC needs a BlipProcessor; give the config sources.captioner (a local BLIP folder)")
        text.captioner.save_pretrained(str(out / "captioner"))
        text.caption_processor.save_pretrained(str(out / "captioner"))
    model.model_id = model_id_of(out)
    write_manifest(out, model.model_id)
    return out


def widen_unet_input(unet: Any, channels: int) -> Any:
    """Widen a pretrained UNet's conv_in to ``channels`` inputs (extra weights zero, so it starts unchanged)."""
    old = unet.conv_in
    if old.in_channels == channels:
        return unet
    new = torch.nn.Conv2d(channels, old.out_channels, old.kernel_size, padding=old.padding)
    with torch.no_grad():
        new.weight.zero_()
        n = min(old.in_channels, channels)
        new.weight[:, :n] = old.weight[:, :n]
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=channels)
    return unet


#: Parts that have no random initialisation: they come from a bundle or a local folder.
NON_RANDOM_PARTS = ("tokenizer", "caption_processor")


def source_parts(cfg: CADCConfig, names: set[str] | None = None) -> dict[str, Any]:
    """The parts ``cfg.sources`` names (local SD-Turbo / BLIP folders), loaded; the UNet's input widened to C.

    ``names`` limits which parts are loaded (None: every part the config needs and has a source for).
    """
    parts: dict[str, Any] = {}
    for spec in required_parts(cfg):
        if names is not None and spec.name not in names:
            continue
        src = cfg.sources.get(spec.name) or (cfg.sources.get("captioner") if spec.name == "caption_processor" else None)
        if src:
            parts[spec.name] = load_part(spec, Path(src))
    if "unet" in parts:
        widen_unet_input(parts["unet"], cfg.codec.latent_channels)
    return parts


def reusable_parts(path: str | Path, cfg: CADCConfig) -> dict[str, Any]:
    """The parts of the bundle at ``path`` that a model of ``cfg`` can take as they are, loaded.

    A model part (UNet, VAE, scheduler, text encoder, captioner) is reusable
    when its config section is the same in the bundle and in ``cfg`` (the
    UNet also needs the same C and VAE latent channels); the tokenizer and
    caption processor always are.  A training run starts from these instead
    of building random parts and copying tensors into them.
    """
    root = Path(path)
    bundle_cfg = _read_config(root)
    parts: dict[str, Any] = {}
    for spec in required_parts(cfg):
        folder = root / spec.folder
        if not _part_present(folder, spec):
            continue
        if spec.name not in NON_RANDOM_PARTS:
            if getattr(bundle_cfg, spec.name) != getattr(cfg, spec.name):  # the part's config section
                continue
            if spec.name == "unet" and (bundle_cfg.codec.latent_channels, bundle_cfg.vae_latent_channels) != (
                    cfg.codec.latent_channels, cfg.vae_latent_channels):
                continue
        parts[spec.name] = load_part(spec, folder)
    return parts


def create_bundle(config: CADCConfig | str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a bundle with random codec weights (and random or ``sources``-copied parts) and save it."""
    cfg = config if isinstance(config, CADCConfig) else CADCConfig.from_yaml(config)
    torch.manual_seed(seed)
    parts = source_parts(cfg)
    for spec in required_parts(cfg):
        if spec.name in NON_RANDOM_PARTS and spec.name not in parts:
            key = "tokenizer" if spec.name == "tokenizer" else "captioner"
            raise ConfigError(
                f"config {cfg.name}: part '{spec.name}' cannot be randomly initialised; "
                f"set sources.{key} to a local save_pretrained folder"
            )
    model = CADCModel(cfg, parts)
    return save_bundle(model, out_dir)


def _check_fit(model: CADCModel, root: Path) -> None:
    """Raise BundleError when loaded parts do not fit the config."""
    c = model.config.codec
    if int(model.unet.config.in_channels) != c.latent_channels:
        raise BundleError(
            f"model bundle part 'unet' in {root / 'unet'} has in_channels={model.unet.config.in_channels}, "
            f"but the config says latent_channels C={c.latent_channels}"
        )
    k = model.config.vae_latent_channels
    if int(model.unet.config.out_channels) != k or int(model.vae.config.latent_channels) != k:
        raise BundleError(
            f"model bundle {root}: the UNet output ({model.unet.config.out_channels}) and the VAE latent "
            f"({model.vae.config.latent_channels}) must both have the config's vae.latent_channels={k} channels"
        )
    te = model.text.text_encoder
    if te is not None and int(te.config.hidden_size) != int(model.unet.config.cross_attention_dim):
        raise BundleError(
            f"model bundle part 'text_encoder' in {root / 'text_encoder'} has hidden_size={te.config.hidden_size}, "
            f"but the UNet's cross_attention_dim is {model.unet.config.cross_attention_dim}"
        )


def _read_config(root: Path) -> CADCConfig:
    """A bundle's config.yaml; BundleError when it is missing or invalid."""
    if not (root / CONFIG_FILE).is_file():
        raise BundleError(f"model bundle part 'config' is missing: no {CONFIG_FILE} in {root}")
    try:
        return CADCConfig.from_yaml(root / CONFIG_FILE)
    except ConfigError as exc:
        raise BundleError(f"model bundle {root}: {exc}") from exc


def _check_codec_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], root: Path) -> None:
    """BundleError unless ``state`` has exactly the tensors (names, shapes) of ``expected``."""
    missing_keys = sorted(set(expected) - set(state))
    extra_keys = sorted(set(state) - set(expected))
    bad_shapes = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing_keys or extra_keys or bad_shapes:
        raise BundleError(
            f"model bundle part 'codec' ({root / CODEC_WEIGHTS}) does not fit {CONFIG_FILE}: "
            f"missing {missing_keys[:5]}, unexpected {extra_keys[:5]}, wrong shape {bad_shapes[:5]}"
        )


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> CADCModel:
    """Load a bundle folder into an eval-mode CADCModel on ``device`` (offline only).

    ``dtype`` casts the pretrained parts (UNet, VAE, text encoder, captioner)
    as each is loaded, so a half-precision GPU decoder never holds them all in
    float32; the codec's own networks stay float32.
    """
    root = Path(path)
    cfg = _read_config(root)
    specs = required_parts(cfg)
    missing = [f"'{s.name}' (looked in {root / s.folder})" for s in specs if not _part_present(root / s.folder, s)]
    if not (root / CODEC_WEIGHTS).is_file():
        missing.insert(0, f"'codec' (looked for {root / CODEC_WEIGHTS})")
    if missing:
        raise BundleError(f"model bundle {root} is missing part(s): {', '.join(missing)}")
    parts = {}
    for spec in specs:
        part = load_part(spec, root / spec.folder)
        if dtype is not None and dtype != torch.float32 and isinstance(part, torch.nn.Module):
            part = part.to(dtype)
        parts[spec.name] = part
    model = CADCModel(cfg, parts)
    _check_fit(model, root)
    try:
        state = load_file(str(root / CODEC_WEIGHTS))
    except Exception as exc:
        raise BundleError(f"model bundle part 'codec' ({root / CODEC_WEIGHTS}) is unreadable: {exc}") from exc
    _check_codec_state(codec_state_dict(model), state, root)
    model.load_state_dict(state, strict=False)
    model.model_id = model_id_of(root)
    return model.to(device).eval()


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> CADCEncoder:
    """Load only the encoder half of a bundle (the sender): config.yaml and the encoder's tensors.

    Reads ``g_a``, ``h_a``, ``h_s``, the entropy bottleneck, the context
    model, UGAQ and the gains from ``codec.safetensors``, and nothing else:
    no diffusers or transformers import, no UNet, VAE, text encoder or
    captioner built or read.  The model id comes from the manifest
    (:func:`bundle_model_id`).
    """
    root = Path(path)
    cfg = _read_config(root)
    weights = root / CODEC_WEIGHTS
    if not weights.is_file():
        raise BundleError(f"model bundle {root} is missing part(s): 'codec' (looked for {weights})")
    # Built on the CPU, not the meta device: meta construction pulls in torch._dynamo (seconds and ~50 MB),
    # while initialising the encoder's few million parameters costs milliseconds.
    encoder = CADCEncoder(cfg)
    try:
        with safe_open(str(weights), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if is_encoder_tensor(k)}
    except Exception as exc:
        raise BundleError(f"model bundle part 'codec' ({weights}) is unreadable: {exc}") from exc
    _check_codec_state(encoder.state_dict(), state, root)
    encoder.load_state_dict(state)
    encoder.model_id = bundle_model_id(root)
    return encoder.to(device).eval()
