"""Tiny, randomly initialised stand-ins for the pretrained parts (tests, benchmarks, the GPU check's dry run).

Writes, with ``save_pretrained``, a CLIP tokenizer built from a small
byte-level vocabulary, a tiny ``CLIPTextModel``, a tiny BLIP captioner with
its ``BlipProcessor``, and (:func:`write_tiny_sd_turbo`) a whole tiny
"SD-Turbo + BLIP" download — ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/`` and a BLIP folder, the same classes and folder layouts as the
real ones — with a caption-mode model config shaped like
``configs/models/cadc-sd-turbo.yaml`` whose ``sources`` point at them.
Small enough to build in a second.  Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path, max_length: int = 32) -> Path:
    """A CLIPTokenizer over single bytes (+ a few merges), saved to ``folder``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = [("a", "n"), ("t", "h"), ("th", "e</w>"), ("i", "n")]
    tokens += ["an", "th", "the</w>", "in"] + _SPECIALS
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    tok.save_pretrained(str(folder))
    return folder


def write_clip_text_encoder(folder: Path, tokenizer_folder: Path, hidden_size: int = 32, max_length: int = 32) -> Path:
    """A 1-layer CLIPTextModel matching the tokenizer in ``tokenizer_folder``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    CLIPTextModel(cfg).save_pretrained(str(folder))
    return Path(folder)


_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "the", "sky", "sea",
          "red", "green", "blue", "house", "tree", "dog", "cat", "person", "on", "in", "with", "boat"]


def write_blip_processor(folder: Path, image_size: int = 32) -> Path:
    """A BlipProcessor (a small BERT word-piece vocabulary, images resized to ``image_size``) in ``folder``."""
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(_WORDS)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def write_blip_captioner(folder: Path, image_size: int = 32) -> Path:
    """A tiny BlipForConditionalGeneration plus its BlipProcessor (BERT word-piece vocab) in ``folder``."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    folder = write_blip_processor(folder, image_size)
    words = _WORDS
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=words.index("[DEC]"), eos_token_id=words.index("[SEP]"),
                         sep_token_id=words.index("[SEP]"), pad_token_id=0),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(cfg)
    # Random weights would often end the caption at once; keep special tokens unlikely so captions have words.
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[:6] -= 20.0
    model.save_pretrained(str(folder))
    return folder


def write_text_parts(root: Path, hidden_size: int = 32) -> dict[str, str]:
    """All three tiny text parts under ``root``; returns a config ``sources`` mapping."""
    root = Path(root)
    tok = write_clip_tokenizer(root / "tokenizer")
    enc = write_clip_text_encoder(root / "text_encoder", tok, hidden_size=hidden_size)
    cap = write_blip_captioner(root / "captioner")
    return {"tokenizer": str(tok), "text_encoder": str(enc), "captioner": str(cap)}


#: The tiny SD-Turbo stand-in's UNet and VAE (also the model config's sections, so bundles reuse them).
TINY_UNET = {"sample_size": 32, "block_out_channels": [8, 16], "layers_per_block": 1,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 32,
             "attention_head_dim": 4, "norm_num_groups": 4}
TINY_KL_VAE = {"type": "kl", "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
               "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
               "mid_block_add_attention": False, "latent_channels": 4, "scaling_factor": 0.18215}
#: Codec sizes of the tiny caption-mode model (its switches are cadc-sd-turbo's: UGAQ, ADGIC, BFATC, y at 1/64).
TINY_CODEC = {"y_channels": 16, "z_channels": 8, "analysis_widths": [8, 8, 8, 16, 16], "hyper_width": 16,
              "latent_channels": 8, "synthesis_width": 16, "aux_widths": [8, 8, 8], "ugaq_width": 8,
              "context_width": 16, "null_text_tokens": 4, "caption_max_tokens": 6}


def write_tiny_sd_turbo(root: Path, sd_turbo_yaml: Path) -> dict:
    """A tiny "SD-Turbo + BLIP" under ``root`` and the model config dict that uses it.

    ``root/sd-turbo/{unet,vae,text_encoder,tokenizer}`` (the UNet reads 4
    channels, as SD-Turbo's does: building a bundle widens it) and
    ``root/blip``; the returned config is ``sd_turbo_yaml`` (the paper's
    model) with every size shrunk and ``sources`` pointing at those folders.
    """
    import yaml
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = Path(root)
    sd = root / "sd-turbo"
    tok = write_clip_tokenizer(sd / "tokenizer")
    write_clip_text_encoder(sd / "text_encoder", tok, hidden_size=TINY_UNET["cross_attention_dim"])
    UNet2DConditionModel(in_channels=4, out_channels=4, **TINY_UNET).save_pretrained(str(sd / "unet"))
    AutoencoderKL(**{k: v for k, v in TINY_KL_VAE.items() if k != "type"}).save_pretrained(str(sd / "vae"))
    write_blip_captioner(root / "blip")
    cfg = yaml.safe_load(Path(sd_turbo_yaml).read_text())
    cfg["name"] = "cadc-sd-turbo-tiny"
    cfg["codec"].update(TINY_CODEC)
    cfg.update(unet=dict(TINY_UNET), vae=dict(TINY_KL_VAE), captioner={},
               text_encoder={"hidden_size": TINY_UNET["cross_attention_dim"], "num_hidden_layers": 1,
                             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32})
    cfg["sources"] = {"unet": str(sd / "unet"), "vae": str(sd / "vae"), "text_encoder": str(sd / "text_encoder"),
                      "tokenizer": str(sd / "tokenizer"), "captioner": str(root / "blip")}
    return cfg


def random_bundle(config_path: Path, out: Path, seed: int = 0, device: str = "cpu", sender_only: bool = False) -> Path:
    """A bundle of the model config at ``config_path`` with every part random at full size (its ``sources``
    ignored), for benchmarks and the GPU check.

    The CLIP tokenizer and BLIP processor have no random init; small ones
    from this module stand in (random weights need no real vocabulary).
    Parameters are initialised on ``device`` (a GPU does the full-size
    model in seconds) and saved from the CPU.  ``sender_only`` writes what a
    sender host holds (``config.yaml``, ``codec.safetensors``,
    ``manifest.json``): the pretrained parts are then only built on the meta
    device (no memory, no time) and never saved.
    """
    import tempfile

    from safetensors.torch import save_file
    from transformers import BlipProcessor, CLIPTokenizer

    from gateway.codec.cadc.bundle import CODEC_WEIGHTS, CONFIG_FILE, codec_state_dict, model_id_of, save_bundle, write_manifest
    from gateway.codec.cadc.config import CADCConfig
    from gateway.codec.cadc.model import CADCModel, build_captioner, build_text_encoder, build_unet, build_vae

    cfg = CADCConfig.from_yaml(config_path)
    cfg.sources = {}
    parts: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.uses_text_encoder:
            length = int(cfg.text_encoder.get("max_position_embeddings", 77))
            parts["tokenizer"] = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(Path(tmp) / "tok", length)))
        if cfg.uses_captioner:
            size = int(cfg.captioner.get("vision_config", {}).get("image_size", 384))
            parts["caption_processor"] = BlipProcessor.from_pretrained(str(write_blip_processor(Path(tmp) / "proc", size)))
        if sender_only:
            with torch.device("meta"):
                parts.update(unet=build_unet(cfg), vae=build_vae(cfg))
                if cfg.uses_text_encoder:
                    parts["text_encoder"] = build_text_encoder(cfg)
                if cfg.uses_captioner:
                    parts["captioner"] = build_captioner(cfg)
        torch.manual_seed(seed)
        with torch.device(device):
            model = CADCModel(cfg, parts)
        if not sender_only:
            return save_bundle(model.to("cpu"), out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / CONFIG_FILE)
    save_file(codec_state_dict(model), str(out / CODEC_WEIGHTS))
    write_manifest(out, model_id_of(out))
    return out
