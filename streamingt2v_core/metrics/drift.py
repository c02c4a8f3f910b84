"""Colour drift: how far a video's colour wanders from its start, window by window, in CIELAB.

Frames (float RGB in 0..1, sRGB as ComfyUI holds them) go to CIELAB with OpenCV,
`cv2.cvtColor(float32 RGB in 0..1, cv2.COLOR_RGB2Lab)` (sRGB gamma and D65 white as OpenCV defines them; L* in
0..100, a* and b* about -127..127). Windows of `window` frames start at 0, step, 2*step, ... as long as they fit;
when frames at the end are left out, one more window ends at the last frame (so every frame is in a window),
and a video shorter than `window` is one window. Per window: the mean and the standard deviation of L*, a*
and b* over all its pixels, and ΔE (CIE76: Euclidean distance in L*a*b*) of its mean colour against the
first window's mean colour. `max_delta_e` is the largest ΔE of the curve.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .video import check_frames, float_frame

DRIFT_WINDOW = 16  # one StreamingT2V chunk
DRIFT_STEP = 16


@dataclass
class ColorDrift:
    window: int
    step: int
    curve: list = field(default_factory=list)  # per window: start, end (exclusive), mean [L,a,b], std [L,a,b], delta_e
    max_delta_e: float = 0.0
    max_at: int = 0  # start frame of the window with the largest ΔE

    def to_dict(self) -> dict:
        return {"window": self.window, "step": self.step, "color_space": "CIELAB (OpenCV COLOR_RGB2Lab)",
                "delta_e": "CIE76", "max_delta_e": self.max_delta_e, "max_at": self.max_at,
                "curve": [dict(c) for c in self.curve]}

    def text(self) -> str:
        return (f"max ΔE {self.max_delta_e:.2f} at window {self.max_at}..{self.max_at + self.window} "
                f"(CIE76 vs frames 0..{self.curve[0]['end']}; windows of {self.window}, step {self.step})")


def check_drift_window(window: int, step: int) -> None:
    for name, v in (("drift window", window), ("drift step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1 (frames; default {DRIFT_WINDOW}), got {v!r}")


def drift_windows(frames: int, window: int = DRIFT_WINDOW, step: int = DRIFT_STEP) -> list[tuple[int, int]]:
    """(start, end) of the colour-drift windows; see the module docstring."""
    check_drift_window(window, step)
    if window >= frames:
        return [(0, frames)]
    spans = [(s, s + window) for s in range(0, frames - window + 1, step)]
    if spans[-1][1] < frames:  # frames left at the end: one last window ends at the last frame
        spans.append((frames - window, frames))
    return spans


def frame_lab_stats(frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (float64, per L*, a*, b*) of one float32 RGB frame in 0..1 after OpenCV's conversion."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(frame_rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)
    lab = lab.reshape(-1, 3).astype(np.float64)
    mean = lab.mean(axis=0)
    return mean, ((lab - mean) ** 2).mean(axis=0)  # two passes: exactly 0 for a flat frame


def color_drift(frames, window: int = DRIFT_WINDOW, step: int = DRIFT_STEP) -> ColorDrift:
    """Colour drift curve of `frames` [T, H, W, 3] (float RGB 0..1 or uint8); see the module docstring.
    Each frame is converted once (one frame in memory at a time)."""
    check_drift_window(window, step)
    frames = check_frames(frames)
    n = frames.shape[0]
    spans = drift_windows(n, window, step)
    means = np.empty((n, 3))
    variances = np.empty((n, 3))
    for t in range(n):
        means[t], variances[t] = frame_lab_stats(float_frame(frames, t))
    curve = []
    for start, end in spans:
        m = means[start:end].mean(axis=0)
        # all frames have the same pixel count: window variance = mean frame variance + variance of frame means
        var = variances[start:end].mean(axis=0) + ((means[start:end] - m) ** 2).mean(axis=0)
        curve.append({"start": start, "end": end, "mean": [float(x) for x in m],
                      "std": [float(x) for x in np.sqrt(var)]})
    ref = np.asarray(curve[0]["mean"])
    for c in curve:
        c["delta_e"] = float(np.linalg.norm(np.asarray(c["mean"]) - ref))
    worst = max(range(len(curve)), key=lambda i: curve[i]["delta_e"])
    return ColorDrift(window=min(window, n), step=step, curve=curve, max_delta_e=curve[worst]["delta_e"],
                      max_at=curve[worst]["start"])
