"""Frame layout helpers: resize to fit a canvas, pad, crop back (frames as (T, C, H, W) tensors)."""
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
