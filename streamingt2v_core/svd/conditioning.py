"""StreamingSVD's per-chunk conditioning, as pure tensor math (reference section 4 and 5).

Pixels are in [-1, 1], frames in the batch dimension ([F, 3, H, W]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import COND_AUG, COND_FRAMES, FRAMES, GUIDANCE_MAX, GUIDANCE_MIN

CLIP_SIZE = 224
# OpenCLIP's image normalisation (the official embedder normalises (x + 1) / 2 with these).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def cond_frames(image: torch.Tensor, uniform: torch.Tensor, level: float = COND_AUG) -> torch.Tensor:
    """The augmented SVD image the VAE encodes: image + 0.02 * U[0, 1) (uniform, not Gaussian, officially)."""
    return image + level * uniform


def guidance_scale(frames: int = FRAMES) -> torch.Tensor:
    """Per-frame guidance scale of the official LinearPredictionGuider: linspace(1.5, 3.0, frames)."""
    return torch.linspace(GUIDANCE_MIN, GUIDANCE_MAX, frames)


def guide(uncond: torch.Tensor, cond: torch.Tensor, frames: int = FRAMES) -> torch.Tensor:
    """x_u + s_f (x_c - x_u) per frame f, on [B*F, ...] predictions of one or more videos."""
    scale = guidance_scale(frames).to(device=cond.device, dtype=cond.dtype)
    shape = (-1, frames) + (1,) * (cond.dim() - 1)
    u, c = uncond.reshape(-1, frames, *uncond.shape[1:]), cond.reshape(-1, frames, *cond.shape[1:])
    return (u + scale.view(shape) * (c - u)).reshape(cond.shape)


def _gaussian_kernel(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    k = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return k / k.sum()


def _antialias_blur(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The Gaussian pre-filter of the official (kornia) antialiased resize: sigma = max((factor - 1) / 2,
    0.001) per axis, kernel max(4 sigma, 3) rounded down and made odd, reflect padding."""
    sigmas, kernels = [], []
    for length, target in zip(x.shape[-2:], size):
        sigma = max((length / target - 1.0) / 2.0, 0.001)
        k = int(max(2.0 * 2 * sigma, 3))
        k += 1 - k % 2
        sigmas.append(sigma)
        kernels.append(k)
    n, c, h, w = x.shape
    ky = _gaussian_kernel(kernels[0], sigmas[0], x.dtype, x.device)
    kx = _gaussian_kernel(kernels[1], sigmas[1], x.dtype, x.device)
    py, px = kernels[0] // 2, kernels[1] // 2
    x = F.pad(x, (px, px, py, py), mode="reflect")
    x = F.conv2d(x.reshape(n * c, 1, *x.shape[-2:]), ky.view(1, 1, -1, 1))
    x = F.conv2d(x, kx.view(1, 1, 1, -1))
    return x.reshape(n, c, h, w)


def official_clip_input(image: torch.Tensor) -> torch.Tensor:
    """OpenCLIP input [N, 3, 224, 224] from images [N, 3, H, W] in [-1, 1], as the official embedder makes it:
    the whole frame squashed to 224x224 (aspect not kept, no crop) by kornia's antialiased bicubic resize
    (a Gaussian pre-filter, then bicubic with align_corners=True), then (x + 1) / 2 and CLIP mean / std.
    ComfyUI's clip_preprocess crops the centre instead."""
    x = image
    if tuple(x.shape[-2:]) != (CLIP_SIZE, CLIP_SIZE):
        if x.shape[-2] > CLIP_SIZE or x.shape[-1] > CLIP_SIZE:
            x = _antialias_blur(x, (CLIP_SIZE, CLIP_SIZE))
        x = F.interpolate(x, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def keep_new_frames(chunk: torch.Tensor, cond_frames: int = COND_FRAMES) -> torch.Tensor:
    """The frames a generated chunk adds to the video: all but the first 7 (which redo the control frames)."""
    return chunk[cond_frames:]


def control_frames(prev_chunk: torch.Tensor, cond_frames: int = COND_FRAMES) -> torch.Tensor:
    """The CAM's control frames for the next chunk: the last 7 frames of the previous chunk."""
    return prev_chunk[-cond_frames:]

