"""Full-reference picture quality: PSNR and MS-SSIM, and both of a decoded picture at once.

These live with the codecs because codecs are chosen by them: the rate
controller's codec choice (:mod:`gateway.ratecontrol.auto`) measures the
classical candidates' decoded pictures, and the CADC quality predictor
(:mod:`gateway.codec.cadc.quality_predictor`) measures its auxiliary
reconstruction, on the sender.  The evaluation tools
(:mod:`gateway.eval.metrics`) and the training losses use the very same
functions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gateway.codec.image_io import box_downscale

#: Pictures larger than this are measured box-reduced to about this many pixels (both of them alike).
MEASURE_PIXELS = 1_000_000
#: The metrics :func:`quality` reports, by the names configs and records use.
METRICS = ("ms_ssim", "psnr")


# Weights of the five MS-SSIM scales (Wang et al. 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_K1, _K2 = 0.01, 0.03


def cell_sums(array: np.ndarray, cell: int) -> np.ndarray:
    """Sums of an HxW[xC] array over ``cell`` x ``cell`` cells (partial edge cells: their own elements)."""
    h, w = array.shape[:2]
    return np.add.reduceat(np.add.reduceat(array, np.arange(0, h, cell), axis=0), np.arange(0, w, cell), axis=1)


def cell_counts(h: int, w: int, cell: int) -> np.ndarray:
    """Elements of each cell of :func:`cell_sums` over an HxW array (float64)."""
    return np.outer(np.diff(np.append(np.arange(0, h, cell), h)), np.diff(np.append(np.arange(0, w, cell), w))).astype(
        np.float64)


def cell_means(array: np.ndarray, cell: int) -> np.ndarray:
    """Means of an HxW (or HxWxC, per channel) float array over ``cell`` x ``cell`` cells (partial edge cells:
    their own pixels)."""
    counts = cell_counts(array.shape[0], array.shape[1], cell)
    return cell_sums(array, cell) / (counts if array.ndim == 2 else counts[:, :, None])


def check_pair(a: np.ndarray, b: np.ndarray) -> None:
    """Raise ValueError unless ``a`` and ``b`` are two HxWx3 images of one shape."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected HxWx3 arrays, got shape {a.shape}")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two HxWx3 uint8 images (``inf`` when identical)."""
    check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)


def _ssim_components(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor,
                     fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and contrast-structure term (separable Gaussian, valid padding).

    ``fast`` blurs the five maps in one channels-last grouped convolution
    (3-10x faster on a CPU, the same sums in another order): for measuring,
    not for the training losses, whose numbers stay as they were.
    """
    c = x.shape[1]

    def blur(t: torch.Tensor, w: torch.Tensor = win) -> torch.Tensor:
        t = F.conv2d(t, w, groups=w.shape[0])
        return F.conv2d(t, w.transpose(2, 3), groups=w.shape[0])

    c1, c2 = _K1**2, _K2**2
    if fast:
        stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1).contiguous(memory_format=torch.channels_last)
        mu_x, mu_y, xx, yy, xy = blur(stacked, win.repeat(5, 1, 1, 1)).chunk(5, dim=1)
        sxx, syy, sxy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    else:
        mu_x, mu_y = blur(x), blur(y)
        sxx = blur(x * x) - mu_x**2
        syy = blur(y * y) - mu_y**2
        sxy = blur(x * y) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs_map
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ms_ssim_levels(height: int, width: int, win_size: int = 11) -> int:
    """How many MS-SSIM scales fit an image (5 for >=161 px, fewer for small images, at least 1)."""
    side = min(height, width)
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side // (2**levels) >= win_size:
        levels += 1
    return levels


def ms_ssim_torch(x: torch.Tensor, y: torch.Tensor, win_size: int = 11, sigma: float = 1.5,
                  fast: bool = False) -> torch.Tensor:
    """Differentiable MS-SSIM per image for ``[B,3,H,W]`` tensors in [0, 1].

    Images too small for five scales use fewer (weights renormalised); images
    smaller than the window shrink the window.  Negative contrast terms are
    clamped at 0 so the power stays defined, as in pytorch-msssim.  ``fast``:
    see :func:`_ssim_components` (measuring only).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two equal [B,C,H,W] tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    h, w = x.shape[-2:]
    win_size = min(win_size, h, w)
    if win_size % 2 == 0:
        win_size -= 1
    win_size = max(win_size, 1)
    levels = ms_ssim_levels(h, w, win_size)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    win = _gaussian_window(win_size, sigma, x.shape[1], x.device, x.dtype)
    values = []
    for level in range(levels):
        ssim_val, cs = _ssim_components(x, y, win, fast)
        if level < levels - 1:
            values.append(torch.relu(cs))
            x = F.avg_pool2d(x, 2, ceil_mode=False)
            y = F.avg_pool2d(y, 2, ceil_mode=False)
        else:
            values.append(torch.relu(ssim_val))
    stack = torch.stack(values, dim=0)  # [levels, B]
    return torch.prod(stack ** weights.view(-1, 1), dim=0)


def to_unit_tensor(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An HxWx3 uint8 image as a [1, 3, H, W] tensor of ``dtype`` in [0, 1]."""
    as_numpy = np.float32 if dtype == torch.float32 else np.float64
    return torch.from_numpy(np.array(a, dtype=as_numpy)).permute(2, 0, 1).unsqueeze(0).to(dtype) / 255.0


def ms_ssim(a: np.ndarray, b: np.ndarray, dtype: torch.dtype = torch.float64) -> float:
    """MS-SSIM in [0, 1] between two HxWx3 uint8 images (fewer scales for small images).

    ``dtype`` float32 is 5-10x faster on a CPU and agrees with float64 to
    about 1e-6: the sender's codec choice measures in float32, evaluations
    keep float64.
    """
    check_pair(a, b)
    with torch.no_grad():
        return float(ms_ssim_torch(to_unit_tensor(a, dtype), to_unit_tensor(b, dtype), fast=dtype != torch.float64)[0])


def measure_size(width: int, height: int, max_pixels: int = MEASURE_PIXELS) -> tuple[int, int]:
    """(width, height) at which a ``width`` x ``height`` picture is measured: itself, or box-reduced to about
    ``max_pixels``."""
    f = min(1.0, math.sqrt(max_pixels / (width * height)))
    return max(1, round(width * f)), max(1, round(height * f))


def quality(reference: np.ndarray, decoded: np.ndarray, max_pixels: int = MEASURE_PIXELS) -> dict[str, float]:
    """``{"ms_ssim", "psnr"}`` of ``decoded`` against ``reference`` (HxWx3 uint8, one shape).

    Above ``max_pixels`` both are box-reduced to about that many pixels
    first (the bound on a sender's measuring time); MS-SSIM in float32.
    PSNR of identical pictures is capped at 99 dB, so the value is JSON-safe.
    """
    check_pair(reference, decoded)
    h, w = reference.shape[:2]
    size = measure_size(w, h, max_pixels)
    if size != (w, h):
        reference, decoded = box_downscale(reference, size), box_downscale(decoded, size)
    return {"ms_ssim": ms_ssim(reference, decoded, torch.float32), "psnr": min(99.0, psnr(reference, decoded))}
