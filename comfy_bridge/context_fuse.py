"""Randomized blending (StreamingT2V §3.3) as a fuse method of ComfyUI's own context windows.

Core's IndexListContextHandler runs the model on each window and adds every window's denoised output,
times a per-frame weight from `handler.fuse_method.func`, into one whole-video result divided by the summed
weights. Our fuse method gives weight 1 to the frames a window owns at this sampler step and 0 elsewhere,
from the seeded cuts of streamingt2v_core.blending.cuts: every frame's weights sum to exactly 1, so each
frame takes one window's prediction unchanged. Nothing of core is copied or patched: the handler is core's,
built with the arguments both ComfyUI 0.3.75 and 0.33 accept (a subclass only fixes 0.3.75's step lookup for
batch-of-frames models), plus an outer-sample wrapper that checks the latent before any model is loaded.
"""
from __future__ import annotations

import comfy.context_windows as cw
import comfy.patcher_extension

from ..streamingt2v_core.blending.cuts import step_owners

FUSE_NAME = "randomized_blending"
SCHEDULES = [cw.ContextSchedules.STATIC_STANDARD, cw.ContextSchedules.UNIFORM_STANDARD]
FRAME_DIMS = {"auto": None, "batch (0): AnimateDiff, SVD": 0, "time (2): Wan, LTXV, HunyuanVideo": 2}
LENGTH_UNITS = ["video frames", "latent frames"]
# Video frames per latent frame, for ComfyUI versions whose latent formats do not say it themselves
# (0.33 has latent_format.temporal_downscale_ratio; 0.3.75 has not). Keyed by latent format class name.
TEMPORAL_RATIOS = {"Wan21": 4, "Wan22": 4, "HunyuanVideo": 4, "HunyuanVideo15": 4, "LTXV": 8, "LTXAV": 8,
                   "Mochi": 6, "Cosmos1CV8x8x8": 8, "CosmosRGB": 1}
WRAPPER_KEY = "RandomizedBlendContextWindows_check"


class RandomizedBlendWeights:
    """The fuse method's weight function: 1.0 on the frames this window owns at the handler's current step.

    Core calls it once per window per step with the window's frame indices; the owners of all frames are
    computed once per step from the schedule's windows (the same call core makes) and kept until the step,
    length or windows change."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._key = None
        self._weights = {}  # (first frame, length) of a window -> its 0/1 weights at the current step

    def weights(self, handler, full_length: int) -> dict:
        windows = handler.context_schedule.func(full_length, handler, {})
        key = (handler._step, full_length, tuple(tuple(w) for w in windows))
        if key != self._key:
            spans = []
            for w in windows:
                if list(w) != list(range(w[0], w[0] + len(w))):
                    raise ValueError(f"randomized blending needs windows of consecutive frames, got {list(w)}: "
                                     f"use context_schedule {' or '.join(SCHEDULES)}")
                spans.append((w[0], w[0] + len(w)))
            spans.sort()
            owners = step_owners(full_length, spans, self.seed, handler._step).tolist()
            # plain lists, built once per step: core asks once per window and cond, and its own
            # ramps cost about a microsecond, so the per-call work stays a dict lookup
            self._weights = {(a, b - a): [1.0 if owners[f] == k else 0.0 for f in range(a, b)]
                             for k, (a, b) in enumerate(spans)}
            self._key = key
        return self._weights

    def __call__(self, length: int, full_length: int = 0, idxs=(), handler=None, **kwargs) -> list[float]:
        weights = self.weights(handler, full_length)
        found = weights.get((idxs[0], len(idxs))) if len(idxs) == length else None
        if found is None or list(idxs) != list(range(idxs[0], idxs[0] + len(idxs))):
            raise ValueError(f"randomized blending: window {idxs[0]}..{idxs[-1]} is not one of this step's "
                             f"windows (a multi-modal latent or another handler's windows); use core's "
                             f"context windows for this model")
        return list(found)


class _Handler(cw.IndexListContextHandler):
    """Core's handler, with the step read from the first row's sigma: 0.3.75 compares the whole timestep
    vector with the schedule, which fails where frames are the batch (one sigma per frame); 0.33 already
    reads the first row. Nothing else differs."""

    def set_step(self, timestep, model_options):
        return super().set_step(timestep[:1], model_options)


def frame_dim(model, choice: str) -> int:
    """The latent dimension that holds frames: the user's choice, or told from the model's latent format."""
    if FRAME_DIMS.get(choice) is not None:
        return FRAME_DIMS[choice]
    fmt = model.model.latent_format
    dims = getattr(fmt, "latent_dimensions", None)
    if dims == 2:  # image latents (B, C, H, W): an AnimateDiff/SVD-style video is the batch
        return 0
    if dims == 3:  # video latents (B, C, T, H, W): Wan, LTXV, HunyuanVideo, Mochi, Cosmos
        return 2
    raise ValueError(f"frame_dim: cannot tell where {type(model.model).__name__} (latent format "
                     f"{type(fmt).__name__}) keeps its frames; set frame_dim to "
                     f"{' or '.join(repr(k) for k in FRAME_DIMS if k != 'auto')}")


def temporal_ratio(model, dim: int) -> int | None:
    """Video frames per latent frame (1 where frames are the batch); None where unknown."""
    if dim == 0:
        return 1
    fmt = model.model.latent_format
    ratio = getattr(fmt, "temporal_downscale_ratio", None)
    return int(ratio) if ratio else TEMPORAL_RATIOS.get(type(fmt).__name__)


def latent_window(model, dim: int, context_length: int, context_overlap: int, unit: str) -> tuple[int, int]:
    """(length, overlap) in latent frames. Video frames convert as core's Wan node does for the length
    (4n+1 video frames = n+1 latent frames) and round the overlap down, to at least 1."""
    if unit == "latent frames":
        return context_length, context_overlap
    r = temporal_ratio(model, dim)
    if r is None:
        raise ValueError(f"length_unit: the number of video frames per latent frame of "
                         f"{type(model.model.latent_format).__name__} is unknown; set length_unit to "
                         f"'latent frames' and give context_length/context_overlap in latent frames")
    return (context_length - 1) // r + 1, max(context_overlap // r, 1)


def window_problems(context_length: int, context_overlap: int) -> list[str]:
    """Why these window sizes cannot be blended (empty: they can); checked at validation."""
    problems = []
    if context_overlap < 1:
        problems.append(f"context_overlap: {context_overlap}; randomized blending needs an overlap of at least "
                        f"1 frame (set 1..context_length-1)")
    if context_overlap >= context_length:
        problems.append(f"context_overlap: {context_overlap} must be smaller than context_length "
                        f"({context_length}); set it to about a third of context_length")
    return problems


def _check_latent(executor, noise, *args, **kwargs):
    """Outer-sample wrapper: refuse a latent the windows cannot cover, before any model is loaded."""
    guider = executor.class_obj
    handler = guider.model_options.get("context_handler")
    blend = getattr(handler, "fuse_method", None)
    if blend is not None and blend.name == FUSE_NAME:
        shapes = kwargs.get("latent_shapes")
        if shapes is not None and len(shapes) > 1:
            raise ValueError("RandomizedBlendContextWindows: this model samples several latents at once "
                             "(e.g. audio and video); randomized blending handles one video latent: use core's "
                             "context windows for it")
        if noise.ndim <= handler.dim:
            raise ValueError(f"frame_dim: the latent has shape {tuple(noise.shape)}, no dimension {handler.dim}; "
                             f"set frame_dim to the model's frame dimension")
        frames = noise.shape[handler.dim]
        if handler.context_length > frames:
            raise ValueError(f"context_length: {handler.context_length} latent frames is longer than the video "
                             f"({frames} latent frames along dim {handler.dim}); set context_length to at most "
                             f"the video's length (equal: one window, no blending)")
    return executor(noise, *args, **kwargs)


def randomized_blend_windows(model, context_length: int, context_overlap: int, seed: int,
                             frame_dim_choice: str = "auto", length_unit: str = "video frames",
                             context_schedule: str = cw.ContextSchedules.STATIC_STANDARD):
    """A clone of `model` (a ComfyUI MODEL) sampling long latents in context windows fused by randomized
    blending. Lengths are in `length_unit`; raises ValueError naming the input for what cannot work."""
    if context_schedule not in SCHEDULES:
        raise ValueError(f"context_schedule: {context_schedule!r} is not supported; use one of {SCHEDULES}")
    if length_unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit: {length_unit!r}; use one of {LENGTH_UNITS}")
    if frame_dim_choice not in FRAME_DIMS:
        raise ValueError(f"frame_dim: {frame_dim_choice!r}; use one of {list(FRAME_DIMS)}")
    problems = window_problems(context_length, context_overlap)
    if problems:
        raise ValueError("; ".join(problems))
    dim = frame_dim(model, frame_dim_choice)
    length, overlap = latent_window(model, dim, context_length, context_overlap, length_unit)
    problems = window_problems(length, overlap)
    if problems:
        raise ValueError(f"in latent frames ({length_unit} {context_length}/{context_overlap} -> latent "
                         f"{length}/{overlap}): " + "; ".join(problems))
    patched = model.clone()
    patched.model_options["context_handler"] = _Handler(
        context_schedule=cw.get_matching_context_schedule(context_schedule),
        fuse_method=cw.ContextFuseMethod(FUSE_NAME, RandomizedBlendWeights(seed)),
        context_length=length, context_overlap=overlap, context_stride=1, closed_loop=False, dim=dim)
    # memory estimates for one window, as core's context-window nodes do
    cw.create_prepare_sampling_wrapper(patched)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _check_latent)
    return patched
