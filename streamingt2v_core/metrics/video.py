"""Frames for the metrics: any video layout the pack meets as uint8 RGB [T, H, W, 3], the working-size
resize of the official mawe.py, and reading a video file (PyAV)."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

# Fewest frames the metrics are defined on: MAWE is a mean over consecutive pairs, and SCuts compares a frame
# with its neighbours (not the node's stream minimum, which is what the CAM reads).
MIN_METRIC_FRAMES = 3


def check_frames(frames, name: str = "frames") -> np.ndarray:
    """[T, H, W, 3] float in 0..1 (torch or numpy; ComfyUI IMAGE layout) or uint8 -> the same values as a
    numpy array, checked (layout, at least MIN_METRIC_FRAMES frames, finite, float range). Not copied where
    a view serves (a CPU float32 IMAGE), so long videos are read frame by frame (`float_frame`)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.dtype == torch.bfloat16:
            frames = frames.float()
        frames = frames.numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"`{name}` must be a torch tensor or numpy array [T, H, W, 3], got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`{name}` must have shape [T, H, W, 3] (frames, height, width, RGB), got {tuple(frames.shape)}")
    if frames.shape[0] < MIN_METRIC_FRAMES:
        raise ValueError(f"`{name}` has {frames.shape[0]} frame(s); the metrics need at least {MIN_METRIC_FRAMES} "
                         "(MAWE is a mean over consecutive pairs, SCuts compares a frame with its neighbours)")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"`{name}` frames are {frames.shape[2]}x{frames.shape[1]} pixels; need at least 2x2")
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"`{name}` must be float in 0..1 or uint8, got dtype {frames.dtype}")
    if not np.isfinite(frames).all():
        raise ValueError(f"`{name}` contains NaN or inf values")
    low, high = float(frames.min()), float(frames.max())
    if low < -0.5 or high > 1.5:  # small overshoots are clipped later; another pixel scale would be scored as noise
        raise ValueError(f"`{name}` values span {low:.4g}..{high:.4g}; float frames must be in 0..1: frames in 0..255 "
                         "become x / 255 (or pass them as uint8), frames in [-1, 1] become (x + 1) / 2")
    return frames


def float_frame(frames: np.ndarray, t: int) -> np.ndarray:
    """Frame `t` of checked frames (`check_frames`) as float32 RGB [H, W, 3] in 0..1 (uint8 / 255; small float
    overshoots clipped)."""
    f = frames[t]
    if f.dtype == np.uint8:
        return f.astype(np.float32) / np.float32(255.0)
    return np.clip(f.astype(np.float32), 0.0, 1.0)


def to_uint8_frames(frames, name: str = "frames") -> np.ndarray:
    """[T, H, W, 3] float in 0..1 (torch or numpy; ComfyUI IMAGE layout) or uint8 -> uint8 numpy.
    Floats are rounded to the nearest 8-bit level (small overshoots clipped); floats far outside 0..1 are refused."""
    frames = check_frames(frames, name)
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    return np.clip(np.rint(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] as torchvision's F.resize(uint8, antialias=False) in
    mawe.py: bilinear (align_corners=False) in float, rounded back to uint8."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()


def read_video(path: str) -> tuple[np.ndarray, float]:
    """All frames of a video file as uint8 RGB [T, H, W, 3] and its frame rate, with PyAV."""
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or 8
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} has no decodable frames")
    return np.stack(frames), float(rate)
