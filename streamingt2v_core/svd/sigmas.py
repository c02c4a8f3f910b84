"""The official StreamingSVD noise schedule: Align-Your-Steps for SVD, interpolated to the step count.

The 11 AYS anchors are interpolated log-linearly (NumPy float64, over [0, 1] on the reversed anchors, as
the official discretizer and ComfyUI's `loglinear_interp` do) to `steps` points, then 0 is appended:
`steps` Euler steps from 700 to 0.002 and a last one to 0. ComfyUI's AlignYourStepsScheduler node instead
interpolates to steps + 1 points and overwrites the last with 0, which is a different schedule.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import AYS_SIGMAS, STEPS


def loglinear(anchors, n: int) -> np.ndarray:
    """`n` points log-linearly between descending `anchors` (float64)."""
    xs = np.linspace(0.0, 1.0, len(anchors))
    ys = np.log(np.asarray(anchors, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, ys))[::-1].copy()


def official_sigmas(steps: int = STEPS) -> torch.Tensor:
    """float64 [steps + 1]: AYS interpolated to `steps` sigmas, then 0 (4 steps: 700, 6.4658, 0.54212,
    0.002, 0). With one step the official schedule is [0.002, 0] (NumPy's one-point linspace is 0)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return torch.from_numpy(np.append(loglinear(AYS_SIGMAS, int(steps)), 0.0))
