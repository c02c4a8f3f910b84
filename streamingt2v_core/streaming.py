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

from .sampling import DDIM


@dataclass
class StreamConditioning:
    """Everything a chunk is conditioned on besides the previous frames: the CFG context rows
    [unconditional, conditional], each 77 text tokens then 16 APM tokens."""

    context: torch.Tensor  # (2, 77 + 16, D)

    @classmethod
    def build(cls, model, prompt: str, negative_prompt: str = "", anchor=None, anchor_tokens=None):
        """`anchor`: a frame (3, H, W) in [0, 1]; or `anchor_tokens` (1, 16, D) from `encode_anchor`.
        The unconditional APM tokens come from an all-zero image in [-1, 1] (mid-grey), as officially."""
        text = model.encode_prompt([negative_prompt, prompt])
        if anchor_tokens is None:
            if anchor is None:
                raise ValueError("StreamConditioning needs an anchor frame or APM tokens")
            anchor_tokens = model.encode_anchor(anchor[None] * 2 - 1)
        uncond = model.encode_anchor(torch.zeros(1, 3, *anchor_size(model, anchor)))
        tokens = torch.cat([uncond.to(anchor_tokens), anchor_tokens.reshape(1, *anchor_tokens.shape[-2:])])
        return cls(torch.cat([text.to(tokens), tokens], dim=1))


def anchor_size(model, anchor) -> tuple:
    if anchor is not None:
        return tuple(anchor.shape[-2:])
    return model.config.height, model.config.width


def make_scheduler(model) -> DDIM:
    return DDIM(**model.config.scheduler)


@torch.no_grad()
def generate_chunk(model, prev_frames: torch.Tensor, cond: StreamConditioning, steps: int = 50,
                   guidance: float = 7.5, eta: float = 1.0, generator: Optional[torch.Generator] = None,
                   on_step: Optional[Callable[[int, int], None]] = None, scheduler: Optional[DDIM] = None,
                   return_latents: bool = False):
    """One chunk. prev_frames: (>= 8, 3, H, W) in [0, 1]; returns the chunk's 16 frames, CPU float32
    (and the final latents with `return_latents`).

    Random draws from `generator` in the official order: the initial latents (1, C, 16, h, w), then
    each step's variance noise."""
    cfg = model.config
    n_cond = cfg.cond_frames
    if prev_frames.shape[0] < n_cond:
        raise ValueError(f"the CAM needs the last {n_cond} frames of the previous chunk; got {prev_frames.shape[0]}")
    h, w = prev_frames.shape[-2:]
    sf = cfg.vae_scale_factor
    if h % sf or w % sf:
        raise ValueError(f"frame size {w}x{h} must be divisible by {sf}")
    scheduler = scheduler or make_scheduler(model)
    device, dtype = model.device, model.dtype
    cond_frames = (prev_frames[-n_cond:] * 2 - 1)[None].to(device, dtype)
    # the CAM's frame encoder sees the same frames at every step and in both rows: once per chunk
    cond_embedding = model.encode_cond_frames(cond_frames)
    guided = guidance != 1.0
    context = cond.context.to(device, dtype)
    if guided:
        cond_embedding = cond_embedding.repeat(2, 1, 1, 1)  # rows are batch-major: (row, frame)
    else:  # guidance 1 is the conditional prediction alone: skip the unconditional row
        context = context[1:]

    gen_device = generator.device if generator is not None else "cpu"
    latents = torch.randn((1, cfg.latent_channels, cfg.chunk_frames, h // sf, w // sf), generator=generator,
                          device=gen_device).to(device)
    timesteps = scheduler.timesteps(steps)
    for i, t in enumerate(timesteps):
        x = latents.to(dtype)
        x = torch.cat([x, x]) if guided else x
        eps = model.predict_noise(x, t, context, None, cond_embedding).float()
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents, steps, eta=eta, generator=generator)
        if on_step is not None:
            on_step(i + 1, steps)
    frames = model.decode_latents(latents)[0].float().cpu()
    return (frames, latents) if return_latents else frames


def chunks_for_frames(frames_to_add: int, new_per_chunk: int = 8) -> int:
    """Whole chunks needed to add at least `frames_to_add` frames."""
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
    each chunk (frames 8..15), CPU float32. `prompts`: one for all chunks, or one per chunk. The anchor
    defaults to frame 0 of `frames` (the official `fixed` conditioning). One generator seeded with
    `seed` drives every draw, so a seed reproduces the stream (the official seed is 33)."""
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be at least 1, got {num_chunks}")
    prompts = [prompts] * num_chunks if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1:
        prompts = prompts * num_chunks
    if len(prompts) != num_chunks:
        raise ValueError(f"got {len(prompts)} prompts for {num_chunks} chunks: give one prompt, or one per chunk")
    if anchor is None and anchor_tokens is None:
        anchor = frames[0]
    if anchor_tokens is None:
        anchor_tokens = model.encode_anchor(anchor[None].to(torch.float32) * 2 - 1)
    conds = {}
    for p in dict.fromkeys(prompts):  # each distinct prompt encoded once
        conds[p] = StreamConditioning.build(model, p, negative_prompt, anchor=anchor, anchor_tokens=anchor_tokens)
    generator = generator or torch.Generator().manual_seed(int(seed))
    scheduler = make_scheduler(model)
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
