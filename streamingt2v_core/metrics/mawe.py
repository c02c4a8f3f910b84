"""MAWE, the motion-aware warp error (StreamingT2V paper, Table 1), as the official `mawe.py` computes it
(reference/official_streamingt2v.md, section 6):
  * frames (uint8) are resized to 720x720, bilinear, no antialias, rounded back to uint8;
  * per consecutive pair (t, t+1): forward flow t -> t+1; motion = mean per-pixel flow magnitude;
    frame t is forward-splatted by the flow (target = round(source + flow), half to even as
    torch.round; on collisions the source that comes last in row-major order wins; targets that
    receive no source are unknown and excluded); warp error = squared error against frame t+1 in
    0..255 units, averaged over known pixel-channels (all of them if none is known);
  * MAWE = mean over pairs of warp_error / (coeff * motion), coeff = 9.5.
Departure, chosen so that stagnation never scores well: the official ratio is near 0 for a frozen
video (no warp error) although the paper means MAWE to punish stagnation. Here a video whose mean
motion is below `stagnation_motion` pixels (at 720x720 scale) has MAWE = inf and `stagnant` = True;
a pair with zero motion contributes inf (the official code would give inf or nan). The per-pair
numbers stay available unchanged. In JSON, inf is written as null, next to `stagnant` and
`frozen_pairs` that say why.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import torch

from .video import resize_frame

WORKING_SIZE = 720
MAWE_COEFF = 9.5
STAGNATION_MOTION = 0.1  # mean flow magnitude in pixels at 720x720 below which a video is stagnant


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return xs, ys


def splat_sources(flow: np.ndarray) -> np.ndarray:
    """For flow [H, W, 2] (dx, dy): the row-major source index that each target pixel receives in
    mawe.py's forward splat, -1 where none. The source at (x, y) lands on (round(x + dx), round(y + dy))
    (float32 sum, half to even as torch.round); targets outside the frame are dropped; on collisions
    the last write of NumPy's fancy assignment wins, i.e. the largest row-major source index."""
    h, w = flow.shape[:2]
    n = h * w
    xs, ys = _pixel_grid(h, w)
    tx = np.rint(xs + flow[..., 0].astype(np.float32, copy=False))
    ty = np.rint(ys + flow[..., 1].astype(np.float32, copy=False))
    inside = (tx >= 0) & (ty >= 0) & (tx < w) & (ty < h)
    target = np.where(inside, ty * np.float32(w) + tx, np.float32(n)).astype(np.int64).ravel()  # n: a dump slot
    # the same NumPy fancy assignment as mawe.py, in row-major source order: the last write wins
    winner = np.full(n + 1, -1, dtype=np.int64)
    winner[target] = np.arange(n, dtype=np.int64)
    return winner[:n].reshape(h, w)


def forward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-splat `image` [C, H, W] by `flow` [2, H, W] (dx, dy) as mawe.py's warp_with_flow (see
    `splat_sources`). Returns the warped image (unknown targets 0) and the known-target mask [H, W]."""
    if image.ndim != 3 or flow.ndim != 3 or flow.shape[0] != 2 or image.shape[1:] != flow.shape[1:]:
        raise ValueError(f"forward_warp needs image [C, H, W] and flow [2, H, W] of the same size, got "
                         f"{tuple(image.shape)} and {tuple(flow.shape)}")
    c, h, w = image.shape
    winner = torch.from_numpy(splat_sources(flow.detach().cpu().permute(1, 2, 0).float().numpy())).reshape(-1)
    known = winner >= 0
    warped = torch.zeros((c, h * w), dtype=image.dtype)
    warped[:, known] = image.reshape(c, -1)[:, winner[known]]
    return warped.reshape(c, h, w), known.reshape(h, w)


def pair_motion(flow: np.ndarray) -> float:
    """Mean over pixels of the L2 norm of the flow [H, W, 2]."""
    return float(np.hypot(flow[..., 0], flow[..., 1]).mean(dtype=np.float64))


def pair_warp_error(left: np.ndarray, right: np.ndarray, flow: np.ndarray) -> float:
    """Warp error of mawe.py for uint8 frames [H, W, 3] and flow [H, W, 2], in 0..255 units: mean of
    (right - warped left)^2 over known pixel-channels (over all of them when none is known, which
    makes it 0). Integer arithmetic, so exact."""
    winner = splat_sources(flow).ravel()
    known = winner >= 0
    count = int(known.sum())
    if count == 0:
        return 0.0
    diff = right.reshape(-1, 3)[known].astype(np.int32) - left.reshape(-1, 3)[winner[known]].astype(np.int32)
    return float(np.einsum("ij,ij->", diff, diff, dtype=np.int64)) / (3 * count)


def mawe_from_pairs(warp_errors: Sequence[float], motions: Sequence[float], coeff: float = MAWE_COEFF,
                    stagnation_motion: float = STAGNATION_MOTION, size: int = WORKING_SIZE) -> dict:
    """Aggregate per-pair values into MAWE (mean of per-pair ratios, as mawe.py) with the
    stagnation rule described in the module docstring. `stagnation_motion` is in pixels at 720x720
    and scaled to the working `size`."""
    we = np.asarray(warp_errors, dtype=np.float64)
    mo = np.asarray(motions, dtype=np.float64)
    if we.size == 0 or we.shape != mo.shape:
        raise ValueError(f"mawe_from_pairs needs equally many warp errors and motions (>= 1), got "
                         f"{we.size} and {mo.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = we / (coeff * mo)
    ratios[mo <= 0] = math.inf  # a frozen pair: no motion to normalise by
    mean_motion = float(mo.mean())
    stagnant = mean_motion < stagnation_motion * size / WORKING_SIZE
    return {"mawe": math.inf if stagnant else float(ratios.mean()),
            "motion": mean_motion,
            "warp_error": float(we.mean()),
            "stagnant": bool(stagnant),
            "frozen_pairs": int((mo <= 0).sum())}


def flow_pairs(frames_u8: np.ndarray, flow_fn, size: int = WORKING_SIZE,
               progress: Callable[[int, int], None] | None = None) -> tuple[list[float], list[float]]:
    """Per consecutive pair: (warp errors, motions) at the working size."""
    n = frames_u8.shape[0] - 1
    warp_errors, motions = [], []
    left = resize_frame(frames_u8[0], size)
    for i in range(n):
        right = resize_frame(frames_u8[i + 1], size)
        flow = np.asarray(flow_fn(left, right), dtype=np.float32)
        if flow.shape != (size, size, 2):
            raise RuntimeError(f"flow estimator returned shape {flow.shape}, expected {(size, size, 2)}")
        motions.append(pair_motion(flow))
        warp_errors.append(pair_warp_error(left, right, flow))
        left = right
        if progress is not None:
            progress(i + 1, n)
    return warp_errors, motions
