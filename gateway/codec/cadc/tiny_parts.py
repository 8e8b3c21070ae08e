"""Tiny, randomly initialised stand-ins for the pretrained text parts (tests and benchmarks).

Writes, with ``save_pretrained``, a CLIP tokenizer built from a small
byte-level vocabulary, a tiny ``CLIPTextModel`` and a tiny BLIP captioner with
its ``BlipProcessor`` — the same classes and folder layouts as the real
SD-Turbo / BLIP parts, small enough to build in a second.  Nothing is
downloaded.
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


def write_blip_captioner(folder: Path, image_size: int = 32) -> Path:
    """A tiny BlipForConditionalGeneration plus its BlipProcessor (BERT word-piece vocab) in ``folder``."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "the", "sky", "sea",
             "red", "green", "blue", "house", "tree", "dog", "cat", "person", "on", "in", "with", "boat"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
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
