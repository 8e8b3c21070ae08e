"""Store a bundle's weights at a lower precision (half the bytes), so a training run can be committed.

Why: a training run on this project's CPU machines lasts one sitting, and
nothing outside the repository outlives the machine it ran on.  A run that
spans sittings therefore carries its weights in the repository, and a
float32 cadc-tiny bundle is 22 MB each time.  Stored in float16 it is half
that, and it loads exactly as a float32 bundle does: the codec's tensors go
through ``load_state_dict`` and diffusers' ``from_pretrained`` keeps the
model's float32 parameters, so every reader (``load_model``, the trainer's
``--init-bundle``) sees float32 weights rounded to float16 (relative error
under 5e-4).

The packed bundle is a new model (its weight files, hence its model id,
differ), so the source's quality calibration, fitted for the old id, is
not copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gateway.codec.cadc.bundle import EXTRA_FILES, MANIFEST, model_id_of, write_manifest
from gateway.errors import BundleError

#: The precisions a bundle can be stored at, by name.
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _pack_file(path: Path, dtype: torch.dtype) -> None:
    """Rewrite one safetensors file with its floating tensors at ``dtype`` (integer tensors as they are)."""
    mode = path.stat().st_mode & 0o777
    with safe_open(str(path), "pt") as fh:  # one read: the metadata and the tensors
        metadata = fh.metadata()
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    packed = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            p = t.to(dtype)
            if not torch.isfinite(p).all():
                raise BundleError(
                    f"{path}: tensor {name!r} (largest magnitude {t.abs().max().item():.3g}) does not fit "
                    f"{str(dtype).removeprefix('torch.')}; pack this bundle as bfloat16 or float32"
                )
            t = p
        packed[name] = t.contiguous()
    save_file(packed, str(path), metadata=metadata)
    # safetensors writes its file private (0600): a ground station's service user must still read the weights.
    os.chmod(path, mode)


def pack_bundle(src: str | Path, out: str | Path, dtype: str = "float16") -> int:
    """Copy the bundle ``src`` to ``out`` with every weight stored at ``dtype``; returns the new model id.

    ``out`` must not exist (a half-written pack never replaces a good one).
    Only ``*.safetensors`` weights are packed; a bundle holding pickled
    ``*.bin`` weights is refused rather than loaded.
    """
    src, out = Path(src), Path(out)
    if dtype not in DTYPES:
        raise BundleError(f"unknown precision {dtype!r}; use one of {', '.join(DTYPES)}")
    if not src.is_dir():
        raise BundleError(f"no bundle folder at {src}")
    if out.exists():
        raise BundleError(f"{out} exists; pack into a new folder (remove the old one first)")
    if any(p.suffix == ".bin" for p in src.rglob("*") if p.is_file()):
        raise BundleError(f"{src} holds *.bin weights; pack only bundles saved as safetensors")
    skip = {MANIFEST, *EXTRA_FILES}
    tmp = out.with_name(f".{out.name}-packing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp, ignore=lambda folder, names: [n for n in names if n in skip and Path(folder) == src])
        for path in sorted(tmp.rglob("*.safetensors")):
            _pack_file(path, DTYPES[dtype])
        model_id = model_id_of(tmp)
        write_manifest(tmp, model_id)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model_id
