"""Synthetic videos with known answers for the metrics tests (textures under a panning camera), an mp4
writer, and a tiny random OpenCLIP model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tests.support.paths import DATA

TINY_CLIP_CONFIG = DATA / "metrics" / "open_clip_tiny_metrics.json"


def noise_texture(seed: int, h: int = 240, w: int = 480) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def smooth_texture(seed: int, h: int = 240, w: int = 480) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 10, 20, generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def panning(texture: np.ndarray, frames: int, shift: int, size: int, start: int = 0) -> np.ndarray:
    """A camera panning right over `texture`: content moves left by `shift` pixels per frame."""
    return np.stack([texture[10:10 + size, 10 + shift * (start + t):10 + shift * (start + t) + size]
                     for t in range(frames)])


def write_mp4(path: Path, frames_u8: np.ndarray, fps: int = 8) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames_u8.shape[2], frames_u8.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames_u8:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_tiny_clip(folder: Path) -> Path:
    """A tiny random OpenCLIP model (TINY_CLIP_CONFIG, seed 0) saved as safetensors in `folder`."""
    import open_clip
    from safetensors.torch import save_file

    open_clip.add_model_config(str(TINY_CLIP_CONFIG))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_CONFIG.stem, pretrained=None)
    path = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def pan_with_jumps(texture: np.ndarray, frames: int, size: int, period: int, phase: int = 0, jump: int = 6,
                   shift: int = 1) -> np.ndarray:
    """A camera panning `shift` px per frame over `texture` that jumps `jump` px further at every frame
    b = phase + k*period (b >= 1): the change into frame b is a (shift + jump)-px move, every other pair a
    `shift`-px move. A seam every `period` frames, as chunks joined without blending look."""
    x, xs = 0, []
    for t in range(frames):
        if t >= 1:
            x += shift + (jump if (t - phase) % period == 0 else 0)
        xs.append(x)
    if 10 + xs[-1] + size > texture.shape[1] or 10 + size > texture.shape[0]:
        raise ValueError(f"texture {texture.shape[1]} px wide is too small for a pan of {xs[-1]} px at size {size}")
    return np.stack([texture[10:10 + size, 10 + x:10 + x + size] for x in xs])


def constant_colors(colors, frames_each: int, size: int = 16) -> np.ndarray:
    """Float RGB frames [len(colors) * frames_each, size, size, 3]: `frames_each` flat frames of each colour."""
    return np.concatenate([np.broadcast_to(np.asarray(c, np.float32), (frames_each, size, size, 3))
                           for c in colors]).copy()
