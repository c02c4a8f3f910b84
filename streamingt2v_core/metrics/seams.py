"""Seam score: how much more a video changes at chunk borders than inside chunks (1.0 = no visible seam).

Frame-to-frame change (`frame_changes`): for each consecutive pair (t-1, t), the mean absolute difference of
the two frames over all pixels and the three RGB channels, in 0..1 units, at the frames' own resolution
(no resize: a seam is a property of the pixels, and no flow is involved). `changes[t - 1]` is the change
*into* frame t.

A border at frame index b (1 <= b <= T-1) is the change between frame b-1 and frame b, i.e. `changes[b - 1]`.
seam_score = mean change at the borders / mean change at every other pair ("inside"). When the inside mean is
0 (static between the borders): 1.0 if the border mean is 0 too (a static video has no seam), else inf
(written as null in JSON, with the two means beside it).

Where the borders come from (`SeamScore.source`):
  * "given: chunk N overlap O" — chunks of N frames, each after the first starting N-O frames after the
    previous one, whose new frames are appended: the joins are at N, N + (N-O), N + 2(N-O), ... (below T).
    StreamingT2V (chunk 16, overlap 8) joins at 16, 24, 32, ...; chunks without overlap (16, 0) at 16, 32, ...
  * "given: list" — explicit frame indices;
  * "detected: period P phase Q" — the borders are Q, Q+P, Q+2P, ... (those >= 1), with the period P
    (MIN_PERIOD .. (T-1)//2, so that a period fits at least twice) and phase Q (0..P-1) that maximise
    the seam score itself; candidates with fewer than 2 borders or no inside pair are skipped; ties go to
    the smaller period, then the smaller phase. Detection on a video without seams still picks its
    largest periodic bump, so a detected score sits a little above 1.0 (about 1.0-1.1 on smooth motion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .video import check_frames, float_frame

MIN_PERIOD = 4  # shortest chunk step searched for; shorter "periods" would be motion jitter, not chunks


@dataclass
class SeamScore:
    score: float  # border_mean / inside_mean (see module docstring for the 0 cases)
    borders: list  # frame indices b: the change from frame b-1 to frame b
    source: str  # "given: chunk N overlap O", "given: list" or "detected: period P phase Q"
    border_mean: float
    inside_mean: float
    period: int | None = None  # detected period and phase (None when the borders were given)
    phase: int | None = None

    def to_dict(self) -> dict:
        """JSON-safe: an infinite score (static inside, changing borders) becomes null."""
        return {"score": self.score if math.isfinite(self.score) else None, "borders": list(self.borders),
                "source": self.source, "border_mean": self.border_mean, "inside_mean": self.inside_mean,
                "period": self.period, "phase": self.phase}

    def text(self) -> str:
        shown = f"{self.score:.3f}" if math.isfinite(self.score) else "inf (no change inside chunks)"
        listed = self.borders if len(self.borders) <= 12 else self.borders[:12] + ["..."]
        return f"{shown} ({self.source}; borders {listed})"


def frame_changes(frames, name: str = "frames") -> np.ndarray:
    """Per consecutive pair (t-1, t), t = 1..T-1: mean |frame t - frame t-1| over pixels and RGB channels,
    in 0..1 units, at the frames' own resolution. `frames` [T, H, W, 3] float 0..1 or uint8 (as the other
    metrics). Reads one frame at a time."""
    frames = check_frames(frames, name)
    out = np.empty(frames.shape[0] - 1, dtype=np.float64)
    prev = float_frame(frames, 0)
    for t in range(1, frames.shape[0]):
        cur = float_frame(frames, t)
        out[t - 1] = np.abs(cur - prev).mean(dtype=np.float64)
        prev = cur
    return out


def chunk_borders(frames: int, chunk: int, overlap: int = 0) -> list[int]:
    """Joins of chunks of `chunk` frames overlapping by `overlap`: chunk, chunk + (chunk-overlap), ... < frames."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 2:
        raise ValueError(f"seam chunk length must be an int >= 2 (e.g. 16 for StreamingT2V), got {chunk!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"seam overlap must be an int >= 0 (e.g. 8 for StreamingT2V), got {overlap!r}")
    if overlap >= chunk:
        raise ValueError(f"seam overlap {overlap} must be smaller than the chunk length {chunk} (each chunk adds "
                         "chunk - overlap new frames); lower the overlap")
    if chunk >= frames:
        raise ValueError(f"seam chunk length {chunk} leaves no border in a video of {frames} frames: give a chunk "
                         f"length below {frames}, or no borders to detect them")
    return list(range(chunk, frames, chunk - overlap))


def check_borders(frames: int, borders: Sequence[int]) -> list[int]:
    """Explicit border frame indices, checked (ints in 1..frames-1, no repeats, at least one pair left inside)
    and sorted."""
    if isinstance(borders, (str, bytes)) or not isinstance(borders, Sequence):
        raise TypeError(f"seam borders must be a list of frame indices, got {type(borders).__name__}")
    if len(borders) == 0:
        raise ValueError("seam borders list is empty: give frame indices such as [16, 32, 48], or none to detect them")
    out = []
    for b in borders:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)):
            raise TypeError(f"seam borders must be integer frame indices, got {b!r}")
        b = int(b)
        if not 1 <= b <= frames - 1:
            raise ValueError(f"seam border {b} is out of range for {frames} frames: a border b is the change from "
                             f"frame b-1 to frame b, so it must be in 1..{frames - 1}")
        out.append(b)
    if len(set(out)) != len(out):
        raise ValueError(f"seam borders {list(borders)} repeat a frame index: list each border once")
    if len(out) >= frames - 1:
        raise ValueError(f"seam borders cover all {frames - 1} frame pairs, so none is left inside a chunk to compare "
                         "with: give fewer borders")
    return sorted(out)


def _ratio(border_mean: float, inside_mean: float) -> float:
    if inside_mean > 0:
        return border_mean / inside_mean
    return 1.0 if border_mean == 0 else math.inf


def can_detect(frames: int, min_period: int = MIN_PERIOD) -> bool:
    """Whether a video of `frames` frames is long enough for border detection (a period fits twice)."""
    return (frames - 1) // 2 >= min_period


def detect_borders(changes: np.ndarray, min_period: int = MIN_PERIOD) -> tuple[int, int]:
    """(period, phase) of the periodic peaks of `changes` (from `frame_changes`); see the module docstring."""
    n = changes.shape[0] + 1  # frames
    if not can_detect(n, min_period):
        raise ValueError(f"seam border detection needs at least {2 * min_period + 1} frames (a period of "
                         f"{min_period} or more seen twice), got {n}: give the chunk length and overlap or a "
                         "border list instead")
    # s[b] = change into frame b; s[0] has no pair (nan)
    s = np.concatenate([[np.nan], changes])
    total, count = float(changes.sum()), changes.shape[0]
    best = None
    for p in range(min_period, (n - 1) // 2 + 1):
        rows = -(-n // p)
        grid = np.full(rows * p, np.nan)
        grid[:n] = s
        grid = grid.reshape(rows, p)  # column q holds the frames b = q (mod p)
        col_n = np.isfinite(grid).sum(axis=0)
        col_sum = np.nansum(grid, axis=0)
        for q in range(p):
            k = int(col_n[q])
            if k < 2 or k >= count:
                continue
            score = _ratio(col_sum[q] / k, (total - col_sum[q]) / (count - k))
            if best is None or score > best[0]:  # strict: ties keep the smaller period / phase
                best = (score, p, q)
    if best is None:  # unreachable when can_detect holds (phase 0 of the shortest period has >= 2 borders)
        raise ValueError(f"no periodic border candidate in {n} frames: give the borders explicitly")
    return best[1], best[2]


def seam_score_from_changes(changes: np.ndarray, chunk: int | None = None, overlap: int | None = None,
                            borders: Sequence[int] | None = None, min_period: int = MIN_PERIOD) -> SeamScore:
    """The seam score of a change signal (`frame_changes`), borders given or detected (see `seam_score`)."""
    changes = np.asarray(changes, dtype=np.float64)
    n = changes.shape[0] + 1
    border_list, source, period, phase = resolve_borders(n, chunk, overlap, borders)
    if border_list is None:
        period, phase = detect_borders(changes, min_period)
        border_list = [b for b in range(phase, n, period) if b >= 1]
        source = f"detected: period {period} phase {phase}"
    mask = np.zeros(n - 1, dtype=bool)
    mask[np.asarray(border_list) - 1] = True
    if mask.all():
        raise ValueError(f"the seam borders {border_list} leave no frame pair inside a chunk in {n} frames: give fewer "
                         "borders or a longer chunk")
    border_mean, inside_mean = float(changes[mask].mean()), float(changes[~mask].mean())
    return SeamScore(score=_ratio(border_mean, inside_mean), borders=border_list, source=source,
                     border_mean=border_mean, inside_mean=inside_mean, period=period, phase=phase)


def resolve_borders(frames: int, chunk: int | None = None, overlap: int | None = None,
                    borders: Sequence[int] | None = None):
    """Check the border inputs for a video of `frames` frames (cheap: call before heavy work). Returns
    (borders, source, None, None), or (None, None, None, None) when the borders are to be detected."""
    if chunk is not None and borders is not None:
        raise ValueError("give either a seam chunk length (with its overlap) or a seam border list, not both")
    if chunk is None and overlap is not None:
        raise ValueError("a seam overlap needs a seam chunk length too; give both, or neither to detect the borders")
    if chunk is not None:
        ov = 0 if overlap is None else overlap
        # frames 1..chunk-1 are always inside (chunk >= 2), so chunks never leave the inside empty
        return chunk_borders(frames, chunk, ov), f"given: chunk {chunk} overlap {ov}", None, None
    if borders is not None:
        return check_borders(frames, borders), "given: list", None, None
    return None, None, None, None


def seam_score(frames, chunk: int | None = None, overlap: int | None = None, borders: Sequence[int] | None = None,
               min_period: int = MIN_PERIOD) -> SeamScore:
    """Seam score of `frames` [T, H, W, 3] (float 0..1 or uint8). Borders from `chunk` (+ `overlap`, default 0),
    or the explicit `borders` list, or (neither) detected as the periodic peaks of the frame-to-frame change.
    See the module docstring for every definition."""
    frames = check_frames(frames)
    resolve_borders(frames.shape[0], chunk, overlap, borders)  # bad borders fail before reading the frames
    return seam_score_from_changes(frame_changes(frames), chunk, overlap, borders, min_period)
