"""Optical flow for the MAWE metric.

The official `mawe.py` uses torchvision RAFT-large, whose weights are a download. We run RAFT-large
when the user gives its weights file (argument or the STREAMINGT2V_RAFT_WEIGHTS environment variable)
and otherwise OpenCV's DIS flow (offline, no weights). MAWE values are comparable only between runs
that used the same flow, so every estimator carries a `name` that the metrics report.

An estimator maps two uint8 RGB frames [H, W, 3] to the forward flow [H, W, 2] (dx, dy) in pixels,
from the left frame to the right frame (the layout of RAFT's output, channels last).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..common.weights import read_weights

RAFT_WEIGHTS_ENV = "STREAMINGT2V_RAFT_WEIGHTS"
FLOW_METHODS = ("auto", "dis", "farneback", "raft")
_RAFT_FIX = "give the torchvision raft_large state dict (.pth or .safetensors) or use the DIS flow"


def _check_pair(left: np.ndarray, right: np.ndarray) -> None:
    for name, a in (("left", left), ("right", right)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"flow input `{name}` must be a uint8 RGB array [H, W, 3], got "
                             f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}")
    if left.shape != right.shape:
        raise ValueError(f"flow inputs differ in size: {left.shape} vs {right.shape}")


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


class DISFlow:
    """OpenCV Dense Inverse Search, preset MEDIUM (the most accurate preset; ~0.1 s per 720x720
    pair on one CPU core). Works on luminance: DIS takes single-channel 8-bit images."""

    def __init__(self, preset: str = "medium"):
        import cv2

        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                   "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if preset not in presets:
            raise ValueError(f"DIS preset must be one of {sorted(presets)}, got {preset!r}")
        self._dis = cv2.DISOpticalFlow_create(presets[preset])
        self.name = f"opencv-dis-{preset}"

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        _check_pair(left, right)
        return self._dis.calc(_gray(left), _gray(right), None)


class FarnebackFlow:
    """OpenCV Farnebäck polynomial-expansion flow (5 pyramid levels so that shifts of tens of
    pixels at 720x720 are found). Weaker than DIS: on smooth, low-gradient frames (a soft texture
    upscaled to 720) it returns zero flow, which would read as stagnation."""

    name = "opencv-farneback"

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        import cv2

        _check_pair(left, right)
        return cv2.calcOpticalFlowFarneback(_gray(left), _gray(right), None, pyr_scale=0.5, levels=5,
                                            winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


class RAFTFlow:
    """torchvision RAFT-large, as the official mawe.py runs it: the input pair is scaled to [-1, 1]
    (the Raft_Large_Weights transforms) and the last refinement iteration is the flow."""

    name = "raft-large"

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu"):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"RAFT weights file not found: {path}. Give the torchvision "
                                    "raft_large state dict (.pth or .safetensors) or use the DIS flow.")
        from torchvision.models.optical_flow import raft_large

        model = raft_large(weights=None, progress=False)
        missing, unexpected = model.load_state_dict(read_weights(path, _RAFT_FIX), strict=False)
        if missing or unexpected:
            raise ValueError(f"RAFT weights {path} do not fit torchvision raft_large: "
                             f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        _check_pair(left, right)
        h, w = left.shape[:2]
        if h % 8 or w % 8 or h < 128 or w < 128:
            raise ValueError(f"RAFT needs frames at least 128x128 with sides divisible by 8, got {w}x{h}; "
                             "use a working size such as 720")

        def prep(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a).permute(2, 0, 1)[None].to(self.device, torch.float32)
            return t / 255.0 * 2.0 - 1.0

        flow = self.model(prep(left), prep(right))[-1]
        return flow[0].permute(1, 2, 0).float().cpu().numpy()


def get_flow(method: str = "auto", raft_weights: str | os.PathLike | None = None,
             device: str | torch.device = "cpu"):
    """Pick the flow estimator. `auto`: RAFT-large when a weights file is given (or named by
    STREAMINGT2V_RAFT_WEIGHTS), else DIS. Never downloads anything."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")
    if raft_weights is None:
        raft_weights = os.environ.get(RAFT_WEIGHTS_ENV) or None
    if method == "raft" and raft_weights is None:
        raise ValueError(f"flow 'raft' needs the RAFT-large weights file: pass raft_weights or set "
                         f"{RAFT_WEIGHTS_ENV}")
    if method == "raft" or (method == "auto" and raft_weights is not None):
        return RAFTFlow(raft_weights, device)
    if method == "farneback":
        return FarnebackFlow()
    return DISFlow()
