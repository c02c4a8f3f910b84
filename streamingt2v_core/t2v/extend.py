"""Stage 2, the autoregressive loop: each new 16-frame chunk is denoised from fresh Gaussian latents
with the CAM reading the previous chunk's last 8 frames and the APM holding the anchor; its first 8
frames regenerate the previous chunk's tail, so only frames 8..15 are new.

All frames are float32 CPU tensors (F, 3, H, W) in [0, 1]; latents live on the model's device only
while a chunk is denoised, so accelerator memory does not grow with the video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..common.guidance import cfg
from .config import StreamingT2VConfig
from .ddim import DDIM
from .model import _check_range, _tensor

_RANGE_FIX = "frames in [-1, 1] become (x + 1) / 2, frames in 0..255 x / 255"


@dataclass
class StreamConditioning:
    """Everything a chunk is conditioned on besides the previous frames: the CFG context rows
    [unconditional, conditional], each 77 text tokens then 16 APM tokens."""

    context: torch.Tensor  # (2, 77 + 16, D)

    @classmethod
    def build(cls, model, prompt: str, negative_prompt: str = "", anchor=None, anchor_tokens=None):
        """`anchor`: a frame (3, H, W) in [0, 1]; or `anchor_tokens` (1, 16, D) from `encode_anchor`.
        The unconditional APM tokens come from an all-zero image in [-1, 1] (mid-grey), as officially."""
        if anchor is None and anchor_tokens is None:
            raise ValueError("StreamConditioning needs an anchor frame or APM tokens")
        if anchor is not None:
            check_anchor(anchor)
        if anchor_tokens is not None:
            check_anchor_tokens(model.config, anchor_tokens)
        text = model.encode_prompt([negative_prompt, prompt])
        if anchor_tokens is None:
            anchor_tokens = model.encode_anchor(anchor[None] * 2 - 1)
        uncond = model.encode_anchor(torch.zeros(1, 3, *anchor_size(model, anchor)))
        tokens = torch.cat([uncond.to(anchor_tokens), anchor_tokens.reshape(1, *anchor_tokens.shape[-2:])])
        return cls(torch.cat([text.to(tokens), tokens], dim=1))


def check_frames(name: str, frames, tail: int | None = None) -> None:
    """ValueError naming `name` unless `frames` are float frames (N, 3, H, W) in [0, 1]; the range is read
    from the last `tail` frames only (what the CAM reads) when given."""
    layout = "(N, 3, H, W) float frames in [0, 1]"
    _tensor(name, frames, layout, 4)
    if frames.shape[1] != 3:
        hint = ""
        if frames.shape[-1] == 3:
            hint = ": a ComfyUI IMAGE [N, H, W, 3] becomes this with image.permute(0, 3, 1, 2)"
        raise ValueError(f"{name} must be {layout}, got shape {tuple(frames.shape)}{hint}")
    _check_range(name, frames[-tail:] if tail else frames, 0.0, 1.0, _RANGE_FIX)


def check_anchor(anchor) -> None:
    """The anchor frame: (3, H, W) float in [0, 1]."""
    layout = "(3, H, W), one float frame in [0, 1]"
    _tensor("anchor", anchor, layout, 3)
    if anchor.shape[0] != 3:
        hint = ": a frame as (H, W, 3) becomes this with frame.permute(2, 0, 1)" if anchor.shape[-1] == 3 else ""
        raise ValueError(f"anchor must be {layout}, got shape {tuple(anchor.shape)}{hint}")
    _check_range("anchor", anchor, 0.0, 1.0, _RANGE_FIX)


def check_anchor_tokens(config: StreamingT2VConfig, tokens) -> None:
    """The APM tokens of one anchor, (1, 16, D) or (16, D), as `encode_anchor` gives them."""
    want = (1, config.apm_tokens, config.context_dim)
    shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
    if (not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point() or tokens.ndim not in (2, 3)
            or tuple(tokens.shape[-2:]) != want[1:] or (tokens.ndim == 3 and tokens.shape[0] != 1)):
        dtype = f" {tokens.dtype}" if isinstance(tokens, torch.Tensor) else ""
        raise ValueError(f"anchor_tokens has shape {shape}{dtype}; expected float {want}: the APM tokens of one "
                         "anchor frame from this model's encode_anchor")


def check_context(config: StreamingT2VConfig, context) -> None:
    """StreamConditioning.context: (2, 77 + 16, D), rows [unconditional, conditional]."""
    want = (2, config.text_tokens + config.apm_tokens, config.context_dim)
    _tensor("cond.context", context, f"{want}", 3)
    if tuple(context.shape) != want:
        raise ValueError(f"cond.context has shape {tuple(context.shape)}; expected {want}: 2 rows [unconditional, "
                         f"conditional] of {config.text_tokens} text then {config.apm_tokens} APM tokens, "
                         f"{config.context_dim} wide; build it with StreamConditioning.build(model, ...)")


def anchor_size(model, anchor) -> tuple:
    if anchor is not None:
        return tuple(anchor.shape[-2:])
    return model.config.height, model.config.width


def make_scheduler(model) -> DDIM:
    return DDIM(**model.config.scheduler)


def stream_problem(config: StreamingT2VConfig, num_frames: int, height: int, width: int) -> str | None:
    """Why frames of this count and size cannot be continued by the CAM (None: they can)."""
    if num_frames < config.min_stream_frames:
        return (f"stream: {num_frames} frames, the CAM needs the last {config.cond_frames} frames; "
                f"start from at least {config.min_stream_frames} frames")
    sf = config.vae_scale_factor
    if height % sf or width % sf:
        return (f"stream: frames are {width}x{height}; width and height must be divisible by {sf}: "
                f"resize them in the init node")
    return None


def split_prompts(prompt: str, per_line: bool) -> list[str]:
    """One prompt, or the non-empty lines of `prompt` (stripped) when `per_line` is on (a story told chunk
    by chunk)."""
    if not per_line:
        return [prompt]
    return [line.strip() for line in prompt.splitlines() if line.strip()]


def chunk_prompts(prompts: Sequence[str] | str, num_chunks: int) -> list[str]:
    """The prompt of each chunk: prompt i for chunk i, the last one carrying on when there are more chunks
    (prompts beyond `num_chunks` are not used). A string is every chunk's prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts: none given; give one prompt, or one per chunk")
    return [prompts[min(i, len(prompts) - 1)] for i in range(num_chunks)]


@torch.no_grad()
def generate_chunk(model, prev_frames: torch.Tensor, cond: StreamConditioning, steps: int = 50,
                   guidance: float = 7.5, eta: float = 1.0, generator: Optional[torch.Generator] = None,
                   on_step: Optional[Callable[[int, int], None]] = None,
                   scheduler: Optional[DDIM] = None) -> torch.Tensor:
    """One chunk. prev_frames: (>= 8, 3, H, W) in [0, 1]; returns the chunk's 16 frames, CPU float32
    (decoded from the final latents by `model.decode_latents`).

    Random draws from `generator` in the official order: the initial latents (1, C, 16, h, w), then
    each step's variance noise."""
    config = model.config
    n_cond = config.cond_frames
    _check_stream(config, "prev_frames", prev_frames)
    h, w = prev_frames.shape[-2:]
    check_context(config, cond.context)
    sf = config.vae_scale_factor
    scheduler = scheduler or make_scheduler(model)
    timesteps = scheduler.timesteps(steps)  # refuses a wrong step count before any work
    device, dtype = model.device, model.dtype
    # One memory layout for the CAM's input whatever the caller's (channels-last, as the VAE decodes frames):
    # the convolutions round differently per layout, and a stream continued from a saved state must match
    # the uninterrupted run bit for bit.
    prev = prev_frames[-n_cond:].contiguous(memory_format=torch.channels_last)
    cond_frames = (prev * 2 - 1)[None].to(device, dtype)
    # the CAM's frame encoder sees the same frames at every step and in both rows: once per chunk
    cond_embedding = model.encode_cond_frames(cond_frames)
    guided = guidance != 1.0
    context = cond.context.to(device, dtype)
    if guided:
        cond_embedding = cond_embedding.repeat(2, 1, 1, 1)  # rows are batch-major: (row, frame)
    else:  # guidance 1 is the conditional prediction alone: skip the unconditional row
        context = context[1:]

    gen_device = generator.device if generator is not None else "cpu"
    latents = torch.randn((1, config.latent_channels, config.chunk_frames, h // sf, w // sf), generator=generator,
                          device=gen_device).to(device)
    for i, t in enumerate(timesteps):
        x = latents.to(dtype)
        x = torch.cat([x, x]) if guided else x
        eps = model.predict_noise(x, t, context, None, cond_embedding).float()
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = cfg(eps_c, eps_u, guidance)
        latents = scheduler.step(eps, t, latents, steps, eta=eta, generator=generator)
        if on_step is not None:
            on_step(i + 1, steps)
    return model.decode_latents(latents)[0].float().cpu()


def _check_stream(config: StreamingT2VConfig, name: str, frames) -> None:
    """Frames a stream continues from: layout, dtype and range of the last `cond_frames` (what the CAM reads),
    count and size."""
    check_frames(name, frames, tail=config.cond_frames)
    problem = stream_problem(config, int(frames.shape[0]), int(frames.shape[-2]), int(frames.shape[-1]))
    if problem:
        raise ValueError(problem)


def chunks_for_frames(frames_to_add: int, new_per_chunk: int | None = None) -> int:
    """Whole chunks needed to add at least `frames_to_add` frames, each adding `new_per_chunk` (a model's
    `config.new_frames_per_chunk`; None: the official model's, 8)."""
    if new_per_chunk is None:
        new_per_chunk = StreamingT2VConfig().new_frames_per_chunk
    if frames_to_add < 1:
        raise ValueError(f"frames to add must be at least 1, got {frames_to_add}")
    return -(-frames_to_add // new_per_chunk)


@torch.no_grad()
def extend_video(model, frames: torch.Tensor, num_chunks: int, prompts: Sequence[str] | str,
                 negative_prompt: str = "", anchor: Optional[torch.Tensor] = None,
                 anchor_tokens: Optional[torch.Tensor] = None, steps: int = 50, guidance: float = 7.5,
                 eta: float = 1.0, seed: int = 33, generator: Optional[torch.Generator] = None,
                 on_step: Optional[Callable[[int, int], None]] = None,
                 on_chunk: Optional[Callable[[int, torch.Tensor], None]] = None) -> list:
    """Adds `num_chunks` chunks after `frames` (N >= 8, 3, H, W) in [0, 1]; returns the new frames of
    each chunk (frames 8..15), CPU float32. `prompts`: one for all chunks, or one per chunk (fewer: the
    last carries on, see `chunk_prompts`). The anchor
    defaults to frame 0 of `frames` (the official `fixed` conditioning). One generator seeded with
    `seed` drives every draw, so a seed reproduces the stream (the official seed is 33)."""
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be at least 1, got {num_chunks}")
    prompts = chunk_prompts(prompts, num_chunks)
    _check_stream(model.config, "frames", frames)
    scheduler = make_scheduler(model)
    scheduler.timesteps(steps)  # refuses a wrong step count before any work
    if anchor is None and anchor_tokens is None:
        anchor = frames[0]
    if anchor is not None:
        check_anchor(anchor)
    if anchor_tokens is not None:
        check_anchor_tokens(model.config, anchor_tokens)
    if anchor_tokens is None:
        anchor_tokens = model.encode_anchor(anchor[None].to(torch.float32) * 2 - 1)
    conds = {}
    for p in dict.fromkeys(prompts):  # each distinct prompt encoded once
        conds[p] = StreamConditioning.build(model, p, negative_prompt, anchor=anchor, anchor_tokens=anchor_tokens)
    generator = generator or torch.Generator().manual_seed(int(seed))
    total = num_chunks * steps
    tail = frames[-model.config.cond_frames:].float().cpu()
    new = []
    for c in range(num_chunks):
        step_cb = None if on_step is None else (lambda s, _n, c=c: on_step(c * steps + s, total))
        chunk = generate_chunk(model, tail, conds[prompts[c]], steps, guidance, eta, generator, step_cb, scheduler)
        fresh = chunk[model.config.cond_frames:].clone()  # a view would keep all 16 decoded frames alive
        new.append(fresh)
        tail = chunk[-model.config.cond_frames:]
        if on_chunk is not None:
            on_chunk(c, fresh)
    return new
