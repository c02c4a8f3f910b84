"""Frame layout helpers: resize to fit a canvas, pad, crop back, or fit to a size by center crop or stretch
(frames as (T, C, H, W) tensors)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_size(h: int, w: int, canvas_h: int, canvas_w: int) -> tuple[int, int]:
    """Largest (h', w') with the frame's aspect that fits the canvas (official `resize_to_fit`; 256x256 -> 720x720)."""
    scale = min(canvas_w / w, canvas_h / h)
    return min(canvas_h, max(1, round(h * scale))), min(canvas_w, max(1, round(w * scale)))


def resize_frames(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bicubic resize of (T, C, H, W); antialiased bicubic (a = -0.5) is PIL's default filter for RGB."""
    if frames.shape[-2:] == (h, w):
        return frames
    return F.interpolate(frames, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


def center_box(h: int, w: int, canvas_h: int, canvas_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an h x w frame centred on the canvas (official `pad_to_fit`: 280 px bars for 720 in 1280)."""
    return (canvas_h - h) // 2, (canvas_w - w) // 2, h, w


def pad_frames(frames: torch.Tensor, box: tuple[int, int, int, int], canvas_h: int, canvas_w: int,
               value: float) -> torch.Tensor:
    top, left, h, w = box
    return F.pad(frames, (left, canvas_w - w - left, top, canvas_h - h - top), value=value)


def crop_frames(frames: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return frames[..., top:top + h, left:left + w]


# How `fit_frames` reaches the target size: keep the aspect ratio (scale to cover, crop the middle) or not.
FIT_MODES = ("center crop", "stretch")


def fit_frames(frames: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """(T, C, H, W) to (T, C, height, width): 'center crop' scales to cover the target (the larger of the
    two scales, each side rounded and at least the target) and keeps the middle; 'stretch' resizes to the
    target. Bicubic with antialiasing, clamped to [0, 1]."""
    if mode not in FIT_MODES:
        raise ValueError(f"resize: '{mode}' is not one of {list(FIT_MODES)}")
    h, w = frames.shape[-2:]
    if mode == "center crop":
        scale = max(height / h, width / w)
        sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
        x = F.interpolate(frames, size=(sh, sw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (sh - height) // 2, (sw - width) // 2
        x = x[..., top:top + height, left:left + width]
    else:
        x = F.interpolate(frames, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 1)
