"""Image quality metrics and the Bjøntegaard delta rate.

Everything here works offline: PSNR and MS-SSIM are computed in-process (MS-SSIM
in torch, so the training losses share the exact same code), the JPEG XL
perceptual tools are called only when their command-line programs are
installed (Debian ``libjxl-devtools``), and learned metrics (LPIPS, DISTS) only
when a TorchScript model for them already sits on disk.  A metric that cannot
be computed returns ``None`` instead of failing, so an evaluation on a bare
machine still produces PSNR / MS-SSIM.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from scipy.interpolate import PchipInterpolator

# PSNR and MS-SSIM live with the codecs (the sender chooses codecs by them); evaluations use them from here.
from gateway.codec.image_metrics import (  # noqa: F401  (re-exported: the evaluation's metrics in one module)
    MS_SSIM_WEIGHTS,
    cell_means,
    check_pair,
    ms_ssim,
    ms_ssim_levels,
    ms_ssim_torch,
    psnr,
    to_unit_tensor,
)

def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(np.clip(v, 0, None), 1 / 2.4) - 0.055)


def block_delta_e(a: np.ndarray, b: np.ndarray, block: int = 16) -> float:
    """Mean CIEDE2000 colour difference between the ``block``x``block`` block means of two HxWx3 uint8 images.

    Block means are taken in linear light (what the eye averages) and
    converted to CIELAB (D65); partial blocks at the right and bottom edges
    count too.  It measures colour casts and lost saturation while ignoring
    texture and edges, which PSNR and MS-SSIM mix in.
    """
    from skimage.color import deltaE_ciede2000, rgb2lab

    check_pair(a, b)

    def block_means(img: np.ndarray) -> np.ndarray:
        lin = _srgb_to_linear(img.astype(np.float64) / 255.0)
        return rgb2lab(np.clip(_linear_to_srgb(cell_means(lin, block)), 0.0, 1.0))

    return float(np.mean(deltaE_ciede2000(block_means(a), block_means(b))))


# ---------------------------------------------------------------- external tools

def _find_tool(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def _run_pair_tool(tool: str, a: np.ndarray, b: np.ndarray, extra: Sequence[str] = ()) -> float | None:
    """Run ``tool ORIG DIST`` on PNG copies and return the first number it prints."""
    check_pair(a, b)
    with tempfile.TemporaryDirectory(prefix="satgw-metric-") as d:
        pa, pb = Path(d) / "a.png", Path(d) / "b.png"
        Image.fromarray(a).save(pa)
        Image.fromarray(b).save(pb)
        try:
            out = subprocess.run([tool, str(pa), str(pb), *extra], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            return None
    if out.returncode != 0:
        return None
    m = re.search(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", out.stdout)
    return float(m.group(0)) if m else None


def butteraugli(a: np.ndarray, b: np.ndarray) -> float | None:
    """Butteraugli max-norm distance (lower is better) via ``butteraugli_main``; None when not installed."""
    tool = _find_tool("butteraugli_main", "butteraugli")
    return _run_pair_tool(tool, a, b) if tool else None


def ssimulacra(a: np.ndarray, b: np.ndarray) -> float | None:
    """SSIMULACRA 2 score (higher is better, 100 = identical) or, if only v1 exists, SSIMULACRA 1
    (lower is better).  None when neither ``ssimulacra2`` nor ``ssimulacra_main`` is installed.

    Use :func:`ssimulacra_version` to know which one the numbers came from.
    """
    tool = _find_tool("ssimulacra2", "ssimulacra_main")
    return _run_pair_tool(tool, a, b) if tool else None


def ssimulacra_version() -> str | None:
    """``"ssimulacra2"``, ``"ssimulacra1"`` or None, matching what :func:`ssimulacra` runs."""
    if shutil.which("ssimulacra2"):
        return "ssimulacra2"
    if shutil.which("ssimulacra_main"):
        return "ssimulacra1"
    return None


# ---------------------------------------------------------------- learned metrics (local weights only)

def _weights_dir() -> Path:
    return Path(os.environ.get("SATGW_METRIC_WEIGHTS", Path.home() / ".cache" / "satgw" / "metrics"))


@functools.lru_cache(maxsize=4)
def _load_torchscript(name: str) -> torch.jit.ScriptModule | None:
    path = _weights_dir() / f"{name}.pt"
    if not path.is_file():
        return None
    return torch.jit.load(str(path), map_location="cpu").eval()


def _learned(name: str, a: np.ndarray, b: np.ndarray) -> float | None:
    check_pair(a, b)
    model = _load_torchscript(name)
    if model is None:
        return None
    # Learned metrics conventionally take inputs in [-1, 1].
    ta = to_unit_tensor(a).float() * 2 - 1
    tb = to_unit_tensor(b).float() * 2 - 1
    with torch.no_grad():
        return float(model(ta, tb).flatten()[0])


def lpips(a: np.ndarray, b: np.ndarray) -> float | None:
    """LPIPS distance from a TorchScript model at ``$SATGW_METRIC_WEIGHTS/lpips.pt``; None when absent.

    Nothing is downloaded: the model must already exist locally (traced with
    inputs in [-1, 1]).
    """
    return _learned("lpips", a, b)


def dists(a: np.ndarray, b: np.ndarray) -> float | None:
    """DISTS distance from a TorchScript model at ``$SATGW_METRIC_WEIGHTS/dists.pt``; None when absent."""
    return _learned("dists", a, b)


def available() -> dict[str, bool]:
    """Which optional metrics can be computed on this machine."""
    return {
        "butteraugli": _find_tool("butteraugli_main", "butteraugli") is not None,
        "ssimulacra": ssimulacra_version() is not None,
        "lpips": (_weights_dir() / "lpips.pt").is_file(),
        "dists": (_weights_dir() / "dists.pt").is_file(),
    }


# ---------------------------------------------------------------- Bjøntegaard

def bd_rate(
    rates_a: Sequence[float],
    quality_a: Sequence[float],
    rates_b: Sequence[float],
    quality_b: Sequence[float],
) -> float | None:
    """Bjøntegaard delta rate of curve B against reference A, in percent.

    Interpolates log(rate) over quality with a monotone piecewise-cubic
    (PCHIP, as the JVET common test conditions do), integrates both curves
    over their overlapping quality interval and returns the mean rate
    difference: -20.0 means B needs 20 % fewer bits than A for the same
    quality.  Returns None when the curves do not overlap in quality or have
    fewer than two usable points each.

    Only each curve's rate–quality frontier is used (a point that costs more
    bits without raising quality is dropped): a model whose quality saturates
    makes log-rate a steep or non-monotone function of quality, and the
    classic cubic polynomial fit then overshoots by orders of magnitude.
    """
    def prep(r: Sequence[float], q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        r_arr = np.asarray(r, dtype=np.float64)
        q_arr = np.asarray(q, dtype=np.float64)
        ok = np.isfinite(r_arr) & np.isfinite(q_arr) & (r_arr > 0)
        r_arr, q_arr = r_arr[ok], q_arr[ok]
        order = np.lexsort((-q_arr, r_arr))
        r_arr, q_arr = r_arr[order], q_arr[order]
        frontier = q_arr > np.maximum.accumulate(np.concatenate(([-np.inf], q_arr[:-1])))
        return np.log(r_arr[frontier]), q_arr[frontier]

    lr_a, q_a = prep(rates_a, quality_a)
    lr_b, q_b = prep(rates_b, quality_b)
    if len(q_a) < 2 or len(q_b) < 2:
        return None
    lo, hi = max(q_a[0], q_b[0]), min(q_a[-1], q_b[-1])
    if hi <= lo:
        return None
    avg_a = PchipInterpolator(q_a, lr_a).integrate(lo, hi) / (hi - lo)
    avg_b = PchipInterpolator(q_b, lr_b).integrate(lo, hi) / (hi - lo)
    return float((math.exp(avg_b - avg_a) - 1.0) * 100.0)


def mean_bd_rates(records: Sequence[dict], codecs: Sequence[str], reference: str,
                  qualities: Sequence[str] = ("ms_ssim", "psnr")) -> dict[str, dict[str, float | None]]:
    """Mean per-image BD-rate (%) of each codec against ``reference``.

    ``records`` are per-image measurements as ``tools/eval.py`` writes them (``image``, ``codec``, ``ok``,
    ``bpp`` and the quality keys); each image contributes one BD-rate per quality from its own curves, and
    images whose curves do not overlap are left out of the mean.  None where no image gives one.
    """
    out: dict[str, dict[str, float | None]] = {}
    images = sorted({r["image"] for r in records})

    def curve(img: str, codec: str, q: str) -> tuple[list[float], list[float]]:
        pts = [(r["bpp"], r[q]) for r in records if r["image"] == img and r["codec"] == codec and r.get("ok")
               and r.get(q) is not None and math.isfinite(r[q])]
        return [p[0] for p in pts], [p[1] for p in pts]

    for c in codecs:
        if c == reference:
            continue
        res: dict[str, float | None] = {}
        for q in qualities:
            vals = [v for img in images
                    if (v := bd_rate(*curve(img, reference, q), *curve(img, c, q))) is not None]
            res[q] = float(np.mean(vals)) if vals else None
        out[c] = res
    return out
