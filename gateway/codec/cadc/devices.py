"""Where CADC runs: one ``device`` setting and one ``precision`` setting, resolved the same way everywhere.

``device`` is ``auto`` (the first CUDA GPU when there is one, else the CPU),
``cpu``, ``cuda`` or ``cuda:N``.  ``precision`` is the dtype of the large
pretrained parts (UNet, VAE, CLIP text encoder, BLIP captioner): ``auto``
(float16 on a GPU, float32 on the CPU), ``fp32``, ``fp16`` or ``bf16``.
Everything that selects a probability model (hyper-networks, entropy and
context models) ignores both: it runs in float64 on the CPU so a bitstream
decodes to the same symbols on every machine (see :mod:`gateway.codec.cadc.codec`).

float16, not bfloat16, is the GPU default: at the paper's t = 999 the
one-step update divides the UNet's noise estimate by √ᾱ ≈ 0.07, so its
rounding error is amplified about 15x, and float16 carries three more
mantissa bits (SD-Turbo is published for float16 inference).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str | None) -> str:
    """``spec`` normalised (None: ``auto``); ConfigError for anything but auto, cpu, cuda, cuda:N.

    Syntax only (no torch import), so configs can be validated before a model is loaded.
    """
    value = "auto" if spec is None else str(spec).strip().lower()
    if not _DEVICE.match(value):
        raise ConfigError(f"device {spec!r} is not one of {DEVICE_CHOICES}")
    return value


def check_precision(spec: str | None) -> str:
    """``spec`` normalised (None: ``auto``); ConfigError unless it is one of :data:`PRECISIONS`."""
    value = "auto" if spec is None else str(spec).strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"precision {spec!r} is not one of {', '.join(PRECISIONS)}")
    return value


def resolve_device(spec: "str | torch.device | None") -> "torch.device":
    """The torch device for a ``device`` setting; ConfigError naming the GPUs there are when one is missing."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    value = check_device_spec(spec)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {value!r} asked for, but this torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use device: auto or cpu, or install a CUDA build of torch")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {value!r} asked for, but this host has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
    return device


def resolve_precision(spec: "str | torch.dtype | None", device: "torch.device") -> "torch.dtype":
    """The dtype of the large pretrained parts for a ``precision`` setting on ``device``.

    The CPU always gets float32: half precision is slow there, and cadc-tiny's
    pictures are defined by its float32 CPU decode.
    """
    import torch

    if isinstance(spec, torch.dtype):
        return spec
    value = check_precision(spec)
    if device.type == "cpu":
        return torch.float32
    return {"auto": torch.float16, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[value]
