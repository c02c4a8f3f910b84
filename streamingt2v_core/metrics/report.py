"""All metrics of one video together (`compute_metrics` -> `VideoMetrics`), over the whole video and over
growing prefixes of it (frames 0..120, 0..140, ...), as the paper reports stability over time; the windows
reuse the per-pair and per-frame values. The seam score (seams.py) and the colour drift (drift.py) are
whole-video measures of their own (the colour drift has its own fixed-size windows)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .clip_score import clip_frame_scores
from .drift import DRIFT_STEP, DRIFT_WINDOW, ColorDrift, check_drift_window, color_drift
from .flow import get_flow
from .mawe import MAWE_COEFF, STAGNATION_MOTION, WORKING_SIZE, flow_pairs, mawe_from_pairs
from .scuts import scene_cuts
from .seams import MIN_PERIOD, SeamScore, can_detect, frame_changes, resolve_borders, seam_score_from_changes
from .video import MIN_METRIC_FRAMES, check_frames, to_uint8_frames

WINDOW_START = 120
WINDOW_STEP = 20


def _finite_or_none(x):
    if x is None:
        return None
    return float(x) if math.isfinite(x) else None


@dataclass
class VideoMetrics:
    frames: int
    size: int
    flow: str
    coeff: float
    mawe: float
    motion: float
    warp_error: float
    stagnant: bool
    frozen_pairs: int
    scuts: int
    cut_frames: list
    clip_score: float | None
    clip_model: str | None
    windows: list = field(default_factory=list)
    motion_per_pair: list = field(default_factory=list)
    warp_error_per_pair: list = field(default_factory=list)
    clip_per_frame: list | None = None
    seam: SeamScore | None = None  # None: borders not given and the video too short to detect them
    color_drift: ColorDrift | None = None

    def to_dict(self, per_pair: bool = False) -> dict:
        """JSON-safe: inf MAWE becomes null (see `stagnant` / `frozen_pairs`)."""
        d = {"frames": self.frames, "mawe": _finite_or_none(self.mawe), "motion": self.motion,
             "warp_error": self.warp_error, "stagnant": self.stagnant, "frozen_pairs": self.frozen_pairs,
             "scuts": self.scuts, "cut_frames": list(self.cut_frames),
             "clip_score": _finite_or_none(self.clip_score), "clip_model": self.clip_model,
             "flow": self.flow, "size": self.size, "coeff": self.coeff,
             "windows": [dict(w, mawe=_finite_or_none(w["mawe"]), clip_score=_finite_or_none(w["clip_score"]))
                         for w in self.windows],
             "seam_score": None if self.seam is None else self.seam.to_dict(),
             "color_drift": None if self.color_drift is None else self.color_drift.to_dict()}
        if per_pair:
            d["motion_per_pair"] = list(self.motion_per_pair)
            d["warp_error_per_pair"] = list(self.warp_error_per_pair)
            d["clip_per_frame"] = None if self.clip_per_frame is None else list(self.clip_per_frame)
        return d

    def report(self) -> str:
        def mawe_text(m, stagnant, frozen):
            if math.isfinite(m):
                return f"{m:.2f}"
            return "inf (stagnation: " + ("no motion" if stagnant else f"{frozen} frozen pair(s)") + ")"

        clip = "n/a (no prompt or CLIP model)" if self.clip_score is None else f"{self.clip_score:.2f}"
        lines = [f"frames: {self.frames}   flow: {self.flow} at {self.size}x{self.size}   coeff: {self.coeff}",
                 f"MAWE: {mawe_text(self.mawe, self.stagnant, self.frozen_pairs)}   (lower is better)",
                 f"motion: {self.motion:.3f} px   warp error: {self.warp_error:.2f}",
                 f"SCuts: {self.scuts}" + (f" at frames {self.cut_frames}" if self.cut_frames else ""),
                 f"CLIP score: {clip}" + (f" ({self.clip_model})" if self.clip_model else "")]
        if self.seam is not None or self.color_drift is not None:
            seam = (f"n/a (fewer than {2 * MIN_PERIOD + 1} frames to detect borders; give them)" if self.seam is None
                    else self.seam.text())
            lines.append(f"seam score: {seam}   (1.0 = no seam)")
            if self.color_drift is not None:
                lines.append(f"colour drift: {self.color_drift.text()}")
        if self.windows:
            lines.append("windows:  frames   MAWE    SCuts   CLIP")
            for w in self.windows:
                c = "-" if w["clip_score"] is None else f"{w['clip_score']:.2f}"
                lines.append(f"          0..{w['end']:<5d} {mawe_text(w['mawe'], w['stagnant'], w['frozen_pairs']):>7s}"
                             f"  {w['scuts']:5d}   {c}")
        return "\n".join(lines)


def window_ends(frames: int, start: int = WINDOW_START, step: int = WINDOW_STEP) -> list[int]:
    """Ends (exclusive) of the growing windows 0..start, 0..start+step, ..., the last one at `frames`;
    none when the video is not longer than `start`."""
    if start < MIN_METRIC_FRAMES or step < 1:
        raise ValueError(f"windows need start >= {MIN_METRIC_FRAMES} and step >= 1, got start={start}, step={step}")
    if frames <= start:
        return []
    ends = list(range(start, frames + 1, step))
    if ends[-1] != frames:
        ends.append(frames)
    return ends


def compute_metrics(frames, prompt: str | None = None, clip=None, flow=None, *, flow_method: str = "auto",
                    raft_weights: str | None = None, size: int = WORKING_SIZE, coeff: float = MAWE_COEFF,
                    stagnation_motion: float = STAGNATION_MOTION, fps: float = 8.0,
                    window_start: int = WINDOW_START, window_step: int = WINDOW_STEP,
                    progress: Callable[[int, int], None] | None = None, seam_chunk: int | None = None,
                    seam_overlap: int | None = None, seam_borders=None, drift_window: int = DRIFT_WINDOW,
                    drift_step: int = DRIFT_STEP) -> VideoMetrics:
    """All metrics of one video. `frames` [T, H, W, 3] float 0..1 or uint8. `clip`: an object with
    `encode_images`, `encode_text` and `name` (e.g. OpenCLIPScorer); the CLIP score is computed only
    with both `prompt` and `clip`. `flow`: an estimator (see flow.py), else chosen by `flow_method`
    and `raft_weights`. `progress(done, total)` is called after each frame pair. Seam score borders:
    `seam_chunk` (+ `seam_overlap`), or the list `seam_borders`, or neither to detect them (seams.py; no seam
    score when the video is too short to detect); colour drift windows `drift_window`, `drift_step` (drift.py)."""
    frames = check_frames(frames)
    u8 = to_uint8_frames(frames)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"working size must be an int >= 8 (the official value is {WORKING_SIZE}), got {size!r}")
    if not coeff > 0:
        raise ValueError(f"coeff must be positive (official 9.5), got {coeff}")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    want_clip = bool(prompt and prompt.strip()) and clip is not None
    ends = window_ends(u8.shape[0], window_start, window_step)
    # seam and drift inputs fail here, before the flow work
    given, _, _, _ = resolve_borders(u8.shape[0], seam_chunk, seam_overlap, seam_borders)
    check_drift_window(drift_window, drift_step)
    if flow is None:
        flow = get_flow(flow_method, raft_weights)

    clip_scores = None
    if want_clip:  # first: mismatched encoders fail at the first batch, before the flow work
        clip_scores = clip_frame_scores(torch.from_numpy(u8).float() / 255.0, prompt, clip.encode_images,
                                        clip.encode_text)
    warp_errors, motions = flow_pairs(u8, flow, size, progress)
    cuts = scene_cuts(u8, fps)
    seam = None
    if given is not None or can_detect(u8.shape[0]):
        # the original frames (not the 8-bit copy), so seams and colours see the exact values
        seam = seam_score_from_changes(frame_changes(frames), seam_chunk, seam_overlap, seam_borders)
    drift = color_drift(frames, drift_window, drift_step)

    def summary(end: int) -> dict:
        m = mawe_from_pairs(warp_errors[:end - 1], motions[:end - 1], coeff, stagnation_motion, size)
        m["scuts"] = sum(1 for c in cuts if c < end)
        m["clip_score"] = None if clip_scores is None else float(clip_scores[:end].mean())
        return m

    whole = summary(u8.shape[0])
    windows = [dict(end=e, **summary(e)) for e in ends]
    return VideoMetrics(frames=int(u8.shape[0]), size=size, flow=flow.name, coeff=float(coeff),
                        mawe=whole["mawe"], motion=whole["motion"], warp_error=whole["warp_error"],
                        stagnant=whole["stagnant"], frozen_pairs=whole["frozen_pairs"], scuts=len(cuts),
                        cut_frames=cuts, clip_score=whole["clip_score"],
                        clip_model=getattr(clip, "name", None) if want_clip else None, windows=windows,
                        motion_per_pair=motions, warp_error_per_pair=warp_errors,
                        clip_per_frame=None if clip_scores is None else clip_scores.tolist(), seam=seam,
                        color_drift=drift)
