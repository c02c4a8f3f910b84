"""Randomized blending (StreamingT2V §3.3, official `model_fn` in diffusion_sdedit.py), as pure tensor functions.

At every solver step the whole-video latent is denoised in overlapping chunks; each chunk predicts x0 and,
inside each overlap, a random cut r decides which chunk's x0 each frame takes: overlap frames before the
cut keep the left chunk, the rest take the right chunk (the right chunk overwrites from `start + r` on).

Departures from the official code (deliberate): no frame is ever dropped, and the cuts come from a seeded
torch.Generator instead of Python's global `random`.
"""
from __future__ import annotations

import torch


MAX_CHUNK = 1024  # frames per chunk; far beyond any video model's window


def chunking_problems(chunk: int, overlap: int) -> list[str]:
    """Why chunks of `chunk` frames overlapping by `overlap` cannot be blended (empty: they can)."""
    problems = []
    if overlap < 1:
        problems.append(f"overlap: {overlap} is too small; allowed 1..chunk-1 (official 8)")
    if chunk > MAX_CHUNK:
        problems.append(f"chunk: {chunk} is too large; allowed overlap+1..{MAX_CHUNK} (official 24)")
    if chunk <= overlap:
        problems.append(f"chunk: {chunk} must be larger than overlap ({overlap}); allowed chunk >= overlap+1 "
                        f"(official chunk 24, overlap 8)")
    return problems


def chunk_starts(frames: int, chunk: int = 24, overlap: int = 8) -> list[int]:
    """Start frame of every chunk; every chunk has `min(chunk, frames)` frames and the last ends at `frames`.

    Lengths of the official form k*(chunk-overlap)+overlap get exactly the official layout (stride
    chunk-overlap). Any other length gets the fewest chunks whose overlaps are all >= `overlap`, spread
    evenly over the video (stride rounded), so no frame is dropped and no overlap is starved.
    A video shorter than `chunk` is one chunk of all its frames.
    """
    if frames < 1:
        raise ValueError(f"the video needs at least 1 frame, got {frames}")
    problems = chunking_problems(chunk, overlap)
    if problems:
        raise ValueError("; ".join(problems))
    if frames <= chunk:
        return [0]
    stride = chunk - overlap
    n = -(-(frames - overlap) // stride)  # ceil: the fewest chunks with overlaps >= overlap
    span = frames - chunk
    return [round(k * span / (n - 1)) for k in range(n)]


def boundary_overlaps(starts: list[int], chunk_len: int) -> list[int]:
    """Overlap length between chunk k-1 and chunk k, for k >= 1."""
    return [starts[k - 1] + chunk_len - starts[k] for k in range(1, len(starts))]


def draw_offsets(overlaps: list[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """One cut per boundary, uniform in 0..overlap-1 (official: random.randint(0, O-1)); int64 [boundaries]."""
    if not overlaps:
        return torch.zeros(0, dtype=torch.long)
    sizes = torch.tensor(overlaps, dtype=torch.long)
    u = torch.rand(len(overlaps), generator=generator, dtype=torch.float64)
    return (u * sizes).floor().long().clamp_(max=sizes - 1)


def check_layout(frames: int, starts: list[int], chunk_len: int) -> None:
    """ValueError unless chunks of `chunk_len` frames at `starts` cover frames 0..frames-1 exactly, in order,
    each overlapping the next (what chunk_starts gives). Python ints only: free at every step."""
    starts = [int(s) for s in starts]
    fix = "take starts from chunk_starts(frames, chunk, overlap) and chunk_len = min(chunk, frames)"
    if not starts or starts[0] != 0:
        raise ValueError(f"starts {starts}: the first chunk must begin at 0; {fix}")
    if starts[-1] + chunk_len != frames:
        raise ValueError(f"starts {starts} with chunks of {chunk_len} frames end at frame {starts[-1] + chunk_len}, "
                         f"the video has {frames} frames: the last chunk must end at the last frame; {fix}")
    for a, b in zip(starts, starts[1:]):
        if not a <= b < a + chunk_len:
            raise ValueError(f"starts {starts}: chunk starts must be in order and each chunk must overlap the next "
                             f"(start {b} after {a}, chunks of {chunk_len} frames); {fix}")


def frame_owners(frames: int, starts: list[int], chunk_len: int, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every frame: the chunk whose x0 it takes and the frame's index inside that chunk.

    Chunk 0 is written whole; chunk k >= 1 overwrites frames [start_k + r_k, start_k + chunk_len).
    """
    check_layout(frames, starts, chunk_len)
    owner = window_owners(frames, [(s, s + chunk_len) for s in starts], offsets)
    local = torch.arange(frames) - torch.tensor(starts, dtype=torch.long)[owner]
    return owner, local


# --- Randomized blending over arbitrary windows (ComfyUI's context windows) -------------------------------
# A window is a contiguous frame span [start, end). The rule is the official one generalised: windows in start
# order, window 0 written whole, window k >= 1 overwrites [start_k + r_k, end_k) with r_k uniform in
# 0..o_k-1, o_k = its overlap with window k-1. With two windows per overlap (any regular layout) frame j of
# an overlap of o frames takes the right window with probability (j+1)/o, as in the paper; where three
# windows meet (core's static schedule shifts its last window back) the same overwrite order still gives
# every frame exactly one window.

_MASK64 = (1 << 64) - 1


def window_overlaps(spans: list[tuple[int, int]]) -> list[int]:
    """Frames window k shares with window k-1 (0 where they only touch), for k >= 1; spans in start order."""
    return [max(0, spans[k - 1][1] - spans[k][0]) for k in range(1, len(spans))]


def cut_seed(seed: int, step: int, boundary: int) -> int:
    """A generator seed from (seed, sampler step, overlap index): splitmix64 over the three, so neighbouring
    seeds, steps and overlaps give unrelated cuts and any one cut can be redrawn alone."""
    x = 0
    for v in (seed, step, boundary):
        x = (x + (int(v) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x & ((1 << 63) - 1)


def step_cuts(overlaps: list[int], seed: int, step: int) -> torch.Tensor:
    """The cut r_k of every overlap at one sampler step, each from its own generator seeded by
    cut_seed(seed, step, k); windows that only touch (overlap 0) get r = 0. int64 [len(overlaps)]."""
    cuts = [int(draw_offsets([ov], torch.Generator().manual_seed(cut_seed(seed, step, k)))[0]) if ov > 0 else 0
            for k, ov in enumerate(overlaps)]
    return torch.tensor(cuts, dtype=torch.long)


def check_windows(frames: int, spans: list[tuple[int, int]]) -> None:
    """ValueError unless the spans are non-empty, inside 0..frames, in start order with growing ends, and
    cover every frame (what core's static and uniform schedules give with stride 1)."""
    if not spans:
        raise ValueError("no windows: give at least one (start, end) span")
    covered = 0
    for k, (a, b) in enumerate(spans):
        if not 0 <= a < b <= frames:
            raise ValueError(f"window {k} spans frames {a}..{b - 1}, outside the video's 0..{frames - 1}")
        if k and not (a > spans[k - 1][0] and b > spans[k - 1][1]):
            raise ValueError(f"windows must be sorted by start with growing ends; window {k} ({a}..{b - 1}) "
                             f"follows {spans[k - 1][0]}..{spans[k - 1][1] - 1}")
        if a > covered:
            raise ValueError(f"frames {covered}..{a - 1} are in no window")
        covered = b
    if covered != frames:
        raise ValueError(f"frames {covered}..{frames - 1} are in no window")


def window_owners(frames: int, spans: list[tuple[int, int]], offsets: torch.Tensor) -> torch.Tensor:
    """For every frame, the index (into spans) of the one window whose prediction it takes."""
    spans = [(int(a), int(b)) for a, b in spans]
    check_windows(frames, spans)
    offsets = torch.as_tensor(offsets, dtype=torch.long).flatten()
    if offsets.numel() != len(spans) - 1:
        raise ValueError(f"need {len(spans) - 1} offsets (one per window after the first), got {offsets.numel()}")
    owner = torch.zeros(frames, dtype=torch.long)
    for k, ov in enumerate(window_overlaps(spans), start=1):
        r = int(offsets[k - 1])
        if not 0 <= r < max(ov, 1):
            raise ValueError(f"offset {r} at boundary {k} is outside 0..{max(ov, 1) - 1}")
        owner[spans[k][0] + r: spans[k][1]] = k
    return owner


def step_owners(frames: int, spans: list[tuple[int, int]], seed: int, step: int) -> torch.Tensor:
    """window_owners with this step's seeded cuts: what randomized blending uses at sampler step `step`."""
    check_windows(frames, spans)
    return window_owners(frames, spans, step_cuts(window_overlaps(spans), seed, step))


def split_chunks(x: torch.Tensor, starts: list[int], chunk_len: int) -> torch.Tensor:
    """(B, C, F, h, w) -> (K*B, C, chunk_len, h, w), chunk-major, so all chunks run as one batch."""
    if x.ndim != 5:
        raise ValueError(f"x must be a video latent (B, C, F, h, w), got shape {tuple(x.shape)}")
    if starts and max(starts) + chunk_len > x.shape[2]:
        raise ValueError(f"x has {x.shape[2]} frames; chunks of {chunk_len} frames at starts {list(starts)} need "
                         f"{max(starts) + chunk_len}: take starts from chunk_starts(frames, chunk, overlap)")
    return torch.cat([x[:, :, s:s + chunk_len] for s in starts], dim=0)


def stitch_x0(chunk_x0: torch.Tensor, starts: list[int], chunk_len: int, frames: int, offsets: torch.Tensor) -> torch.Tensor:
    """Blend per-chunk x0 (K*B, C, chunk_len, h, w) into the whole-video x0 (B, C, F, h, w)."""
    k = len(starts)
    if chunk_x0.ndim != 5:
        raise ValueError(f"chunk_x0 must be per-chunk x0 (K*B, C, {chunk_len}, h, w), got shape "
                         f"{tuple(chunk_x0.shape)}")
    kb, c, fl, h, w = chunk_x0.shape
    if kb % k or fl != chunk_len:
        raise ValueError(f"chunk_x0 {tuple(chunk_x0.shape)} does not hold {k} chunks of {chunk_len} frames")
    owner, local = frame_owners(frames, starts, chunk_len, offsets)
    per_chunk = chunk_x0.view(k, kb // k, c, fl, h, w)
    owner, local = owner.to(chunk_x0.device), local.to(chunk_x0.device)
    picked = per_chunk[owner, :, :, local]          # (F, B, C, h, w)
    return picked.permute(1, 2, 0, 3, 4).contiguous()
