"""The model a training run starts from: its config (with overrides), pretrained parts, warm starts.

Where each part comes from, first match wins:

1. a resume: what the run kept in ``<out>/parts/`` when it started (the
   tokenizer, the caption processor and the architecture of each pretrained
   part); every tensor then comes from the checkpoint;
2. ``--init-bundle``: its parts whose config section is the same as the
   model config's are used as they are (the SD-Turbo UNet, VAE and CLIP and
   the BLIP captioner of a bundle built from the user's folders), with its
   tokenizer and caption processor;
3. fresh runs: the config's ``sources`` (local SD-Turbo / BLIP folders);
4. random initialisation (the tokenizer and caption processor have none: a
   text mode that needs them without any of the above is a BundleError).

Then fresh runs copy the init bundle's other tensors (its codec weights,
and any part that changed shape-compatibly) and every ``--init`` source
into the model where names and shapes agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from gateway.errors import BundleError, ConfigError
from gateway.training.config import apply_overrides

#: Sub-folder of the run folder holding the parts a resume cannot rebuild (tokenizer, caption processor).
PARTS_DIR = "parts"


def read_model_config(model_config: str | Path, overrides: list[str] | None = None) -> Any:
    """The CADCConfig of a model YAML with ``--set`` overrides applied (sources kept, relative to the YAML)."""
    from gateway.codec.cadc.config import CADCConfig

    cfg = CADCConfig.from_yaml(model_config)
    if overrides:
        cfg = CADCConfig.from_dict(apply_overrides(cfg.to_dict() | {"sources": cfg.sources}, overrides),
                                   origin=f"{model_config} with --set {' '.join(overrides)}")
    return cfg


def _saved_parts(run_dir: Path, cfg: Any) -> dict[str, Any]:
    """The parts a run kept when it started (:func:`save_run_parts`): text pieces loaded, networks built from
    their saved configs (random weights: a resume overwrites every tensor from the checkpoint)."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel

    from gateway.codec.cadc.bundle import PartSpec, load_part

    root = run_dir / PARTS_DIR
    parts: dict[str, Any] = {}
    for name, loader in (("tokenizer", "transformers:CLIPTokenizer"), ("caption_processor", "transformers:BlipProcessor")):
        if (root / name).is_dir():
            parts[name] = load_part(PartSpec(name, name, loader), root / name)
    vae_cls = AutoencoderTiny if cfg.vae_type == "tiny" else AutoencoderKL
    for name, cls in (("unet", UNet2DConditionModel), ("vae", vae_cls), ("scheduler", DDPMScheduler)):
        if (root / name / "config.json").is_file():
            parts[name] = cls.from_config(cls.load_config(str(root / name)))
    if (root / "text_encoder" / "config.json").is_file() and cfg.uses_text_encoder:
        from transformers import CLIPTextConfig, CLIPTextModel

        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder")))
    if (root / "captioner" / "config.json").is_file() and cfg.uses_captioner:
        from transformers import BlipConfig, BlipForConditionalGeneration

        parts["captioner"] = BlipForConditionalGeneration(BlipConfig.from_pretrained(str(root / "captioner")))
    return parts


def save_run_parts(model: Any, run_dir: str | Path) -> None:
    """Keep in the run folder what a resume cannot take from a checkpoint: the tokenizer and caption
    processor, and the architecture (config) of every pretrained part, which may differ from the model
    config's sections when it came from a bundle or a local folder.  A resume then needs no bundle or source."""
    root = Path(run_dir) / PARTS_DIR
    text = model.text
    for name, part in (("tokenizer", text.tokenizer), ("caption_processor", text.caption_processor)):
        if part is not None:
            part.save_pretrained(str(root / name))
    for name, module in (("unet", model.unet), ("vae", model.vae), ("scheduler", model.scheduler)):
        module.save_config(str(root / name))
    for name, module in (("text_encoder", text.text_encoder), ("captioner", text.captioner)):
        if module is not None:
            module.config.save_pretrained(str(root / name))


def build_model(model_config: str | Path, overrides: list[str] | None = None, init_bundle: str | None = None,
                init_parts: list[str] | None = None, inits: list[list[str]] | None = None,
                run_dir: str | Path | None = None, resume: bool = False,
                log: Callable[[str], None] = lambda line: print(line, flush=True)) -> Any:
    """The CADCModel a run starts from (see the module docstring for where each part comes from).

    ``init_parts`` limits what the init bundle gives to parameters with
    those name prefixes (its tokenizer and caption processor still come
    along); ``inits`` are more ``[source, *prefixes]`` warm starts (bundle
    folders or checkpoint files) applied after it, on fresh runs only.
    """
    from gateway.codec.cadc.bundle import NON_RANDOM_PARTS, reusable_parts, required_parts, source_parts
    from gateway.codec.cadc.model import CADCModel

    cfg = read_model_config(model_config, overrides)
    parts: dict[str, Any] = _saved_parts(Path(run_dir), cfg) if (resume and run_dir) else {}
    reused: set[str] = set()
    if init_bundle and Path(init_bundle).is_dir():
        for name, part in reusable_parts(init_bundle, cfg).items():
            if name not in parts and (not init_parts or name in NON_RANDOM_PARTS):
                parts[name] = part
                reused.add(name)
        if reused - set(NON_RANDOM_PARTS):
            log(f"parts used as they are from {init_bundle}: {', '.join(sorted(reused - set(NON_RANDOM_PARTS)))}")
    if not resume:
        needed = {s.name for s in required_parts(cfg)} - set(parts)
        parts.update(source_parts(cfg, needed))
    missing = [n for n in NON_RANDOM_PARTS if n in {s.name for s in required_parts(cfg)} and n not in parts]
    if missing:
        raise BundleError(
            f"model {cfg.name} (text mode {cfg.codec.text_mode}) needs {' and '.join(missing)}, which have no random "
            f"initialisation, and none was found: give --init-bundle with a bundle that has them (tokenizer/, "
            f"captioner/), or set sources.tokenizer / sources.captioner in {model_config}"
        )
    model = CADCModel(cfg, parts)
    if resume:
        return model  # every tensor comes from the checkpoint
    sources = ([[init_bundle, *(init_parts or [])]] if init_bundle else []) + list(inits or [])
    for source, *prefixes in sources:
        state, prefixes = _warm_start_state(source, cfg, reused if source == init_bundle else set(), prefixes)
        from gateway.training.checkpoint import warm_start

        report = warm_start(model, state, prefixes or None)
        log(f"warm start from {source}: {len(report['copied'])} tensors copied, "
            f"{len(report['reshaped'])} skipped for shape, {len(report['missing'])} not in the source")
    return model


def _warm_start_state(source: str, cfg: Any, reused: set[str], prefixes: list[str]) -> tuple[dict, list[str]]:
    """The tensors to copy from ``source`` and the name prefixes to copy.

    When every model part of a bundle was taken as it is, only its codec
    weights are read (a full-size bundle is not loaded twice).
    """
    from gateway.codec.cadc.bundle import CODEC_WEIGHTS, NON_RANDOM_PARTS, load_model, required_parts
    from gateway.codec.cadc.model import CODEC_MODULES, CODEC_PARAMS
    from gateway.training.checkpoint import load_checkpoint

    if Path(source).is_file():
        return load_checkpoint(source, restore_rng=False)["model"], prefixes
    model_parts = {s.name for s in required_parts(cfg)} - set(NON_RANDOM_PARTS)
    if model_parts <= reused:
        from safetensors.torch import load_file

        return load_file(str(Path(source) / CODEC_WEIGHTS)), prefixes or [f"{m}." for m in CODEC_MODULES] + list(CODEC_PARAMS)
    return load_model(source).state_dict(), prefixes
