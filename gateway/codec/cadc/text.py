"""Text conditioning of the one-step UNet: BFATC captions, the fixed prompt, or a learned null text.

* ``caption`` (BFATC [4.3]): a frozen BLIP captioner describes the auxiliary
  reconstruction ``x̂_aux``; the prompt ``caption + ", " + c_fix`` goes through
  the CLIP text encoder.  No bits are spent on text.
* ``fixed``: only ``c_fix`` goes through the text encoder (computed once).
* ``none``: a learned null embedding; no text encoder is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from gateway.codec.cadc.config import C_FIX


def build_prompt(caption: str) -> str:
    """The BFATC prompt for a caption of x̂_aux."""
    caption = caption.strip()
    return f"{caption}, {C_FIX}" if caption else C_FIX


class TextConditioning(nn.Module):
    """Produces the UNet's ``encoder_hidden_states`` for a batch, in one of three modes."""

    def __init__(
        self,
        mode: str,
        embed_dim: int,
        null_tokens: int,
        caption_max_tokens: int = 20,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        captioner: nn.Module | None = None,
        caption_processor: Any = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.caption_max_tokens = caption_max_tokens
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.captioner = captioner
        self.caption_processor = caption_processor
        # Learned "no text" embedding (only used in mode none, but always present so bundles have one shape).
        self.null_embedding = nn.Parameter(torch.zeros(null_tokens, embed_dim))
        self._fixed_cache: torch.Tensor | None = None
        for frozen in (text_encoder, captioner):
            if frozen is not None:
                frozen.requires_grad_(False)
                frozen.eval()

    @torch.no_grad()
    def caption(self, images: torch.Tensor) -> list[str]:
        """BLIP captions of a batch of images in [0, 1], [B, 3, H, W]."""
        if self.captioner is None or self.caption_processor is None:
            raise RuntimeError("caption mode needs a captioner and its processor")
        arrays = [
            (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
            for img in images
        ]
        inputs = self.caption_processor(images=arrays, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device=images.device, dtype=next(self.captioner.parameters()).dtype)
        ids = self.captioner.generate(pixel_values=pixel_values, max_new_tokens=self.caption_max_tokens, do_sample=False)
        return [c.strip() for c in self.caption_processor.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """CLIP text embeddings [B, L, D] of prompts (padded to the encoder's length)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("text modes caption/fixed need a text encoder and tokenizer")
        max_len = min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))
        tokens = self.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        return self.text_encoder(input_ids=tokens["input_ids"].to(device))[0]

    def forward(self, x_aux: torch.Tensor | None, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, list[str] | None]:
        """(encoder_hidden_states [B, L, D], captions or None)."""
        if self.mode == "none":
            return self.null_embedding.to(dtype).unsqueeze(0).expand(batch, -1, -1), None
        if self.mode == "fixed":
            if self._fixed_cache is None or self._fixed_cache.device != device:
                self._fixed_cache = self.encode_prompts([C_FIX], device)
            return self._fixed_cache.to(dtype).expand(batch, -1, -1), None
        assert x_aux is not None, "caption mode needs x_aux (ADGIC on)"
        captions = self.caption(x_aux)
        emb = self.encode_prompts([build_prompt(c) for c in captions], device)
        return emb.to(dtype), captions
