"""The official StreamingSVD enhancement with I2VGen-XL: SDEdit video-to-video at strength 0.97 of 30 steps, one
keyframe image per chunk, randomized blending on x_{t-1} after every step.

Official loop (reference/official_streamingsvd.md s. 6): set_timesteps(steps); begin at index
steps - int(steps * strength) (1 for 0.97 of 30); VAE-encode the video (posterior sample) x scale, add_noise at the
first timestep; every step, every chunk with its own keyframe: guided v, scheduler.step on the chunk's frames,
then chunk k >= 1 overwrites the new latent from its start + r_k (r_k uniform in 0..overlap-1), the earlier chunk
keeps the rest of the overlap.

Departures (deliberate, as the StreamingT2V refiner): no frame is dropped (the chunk layout of
blending.cuts.chunk_starts: the official one for lengths (chunk - overlap)(n - 1) + chunk, evenly spread overlaps
>= `overlap` otherwise), and every draw comes from seeded torch generators: one for the VAE posteriors and the
SDEdit noise, in the order keyframe pass (anchor, keyframe frames, noise), keyframe conditionings, main pass
(frames, noise); another for the cuts (official: the global torch RNG for image latents, Python `random` for cuts).
"""
from __future__ import annotations

from typing import Callable

import torch

from ...blending.cuts import boundary_overlaps, chunk_starts, draw_offsets, split_chunks, stitch_x0
from ...blending.sdedit import check_images, decode_latents, encode_frames
from ...common.frames import resize_frames
from .model import (OFFICIAL_CHUNK, OFFICIAL_FPS, OFFICIAL_GUIDANCE, OFFICIAL_NEGATIVE_PROMPT, OFFICIAL_OVERLAP,
                    OFFICIAL_PROMPT, OFFICIAL_STEPS, OFFICIAL_STRENGTH, I2VGenXLEnhancer, Keyframe)

# (step, total steps, whole-video latent after blending, per-chunk stepped latents (K, C, clen, h, w), cuts)
StepTrace = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def sdedit_begin(steps: int, strength: float) -> int:
    """Index of the first timestep SDEdit runs (the img2img rule: steps - int(steps * strength); 1 for 0.97 of 30)."""
    return max(steps - min(int(steps * strength), steps), 0)


def chunk_layout(frames: int, chunk: int, overlap: int) -> list[int]:
    """Chunk starts: one chunk when it covers the video (any overlap, as the official keyframe pass and the
    pass without blending), else blending.cuts.chunk_starts."""
    if frames < 1:
        raise ValueError(f"the video needs at least 1 frame, got {frames}")
    return [0] if int(chunk) >= frames else chunk_starts(frames, int(chunk), int(overlap))


def check_settings(steps: int, strength: float, guidance: float, fps: int) -> None:
    problems = []
    if int(steps) < 1:
        problems.append(f"steps: {steps}; allowed 1..1000 (official 30)")
    if not 0.0 < float(strength) <= 1.0:
        problems.append(f"strength: {strength}; allowed above 0 up to 1 (official 0.97)")
    elif int(steps) >= 1 and sdedit_begin(int(steps), float(strength)) >= int(steps):
        problems.append(f"strength: {strength} of {steps} steps runs no step; raise strength or steps "
                        "(official 0.97 of 30)")
    if float(guidance) < 0:
        problems.append(f"guidance: {guidance}; allowed 0 and up (official 9.0; 1 or less: no guidance)")
    if int(fps) < 1:
        problems.append(f"fps: {fps}; allowed 1 and up (official 38)")
    if problems:
        raise ValueError("; ".join(problems))


@torch.no_grad()
def enhance_latents(model: I2VGenXLEnhancer, clean: torch.Tensor, keyframes: list[Keyframe], context, negative_context,
                    generator: torch.Generator, chunk: int = OFFICIAL_CHUNK, overlap: int = OFFICIAL_OVERLAP,
                    steps: int = OFFICIAL_STEPS, strength: float = OFFICIAL_STRENGTH,
                    guidance: float = OFFICIAL_GUIDANCE, fps: int = OFFICIAL_FPS, seed: int = 0, cuts=None,
                    trace: StepTrace | None = None, rows_together: bool = True) -> torch.Tensor:
    """SDEdit of the clean whole-video latent `clean` (1, 4, F, h, w): noised at the first timestep with noise from
    `generator` (drawn frames-major, (F, 4, h, w), as the official add_noise on (B*F, C, h, w)), then denoised in
    chunks of chunk_starts(F, chunk, overlap), chunk k conditioned on keyframes[k], blending the stepped latents.
    cuts (steps run x boundaries) replace the draws of torch.Generator().manual_seed(seed). Returns the final latent."""
    check_settings(steps, strength, guidance, fps)
    if clean.ndim != 5 or clean.shape[0] != 1 or not clean.is_floating_point():
        raise ValueError(f"clean must be one float video latent (1, 4, F, h, w), got {tuple(clean.shape)} "
                         f"{clean.dtype}")
    frames = clean.shape[2]
    starts = chunk_layout(frames, chunk, overlap)
    clen = min(chunk, frames)
    if len(keyframes) != len(starts):
        raise ValueError(f"{len(keyframes)} keyframes for {len(starts)} chunks (starts {starts}): give one per chunk, "
                         "the first frame of each (chunk_starts)")
    overlaps = boundary_overlaps(starts, clen)
    sched = model.fresh_scheduler()
    sched.set_timesteps(int(steps))
    begin = sdedit_begin(int(steps), float(strength))
    timesteps = sched.timesteps[begin:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin)
    if cuts is not None:
        cuts = torch.as_tensor(cuts, dtype=torch.long).reshape(len(timesteps), len(overlaps))
    cut_gen = torch.Generator().manual_seed(int(seed))
    dev = clean.device

    c, h, w = clean.shape[1], clean.shape[3], clean.shape[4]
    by_frame = clean[0].permute(1, 0, 2, 3)  # (F, C, h, w)
    noise = torch.randn(by_frame.shape, generator=generator).to(dev)
    x = sched.add_noise(by_frame, noise, timesteps[:1].to(dev)).permute(1, 0, 2, 3).unsqueeze(0)
    del noise, by_frame
    for i, t in enumerate(timesteps):
        stepped = []
        for k, part in enumerate(split_chunks(x, starts, clen).split(1)):
            v = model.guided_output(sched.scale_model_input(part, t), t, context, negative_context, keyframes[k],
                                    guidance, fps, rows_together)
            # the scheduler steps (F, C, h, w), frames as the batch, as the official loop
            out = sched.step(v[0].permute(1, 0, 2, 3), t, part[0].permute(1, 0, 2, 3), eta=0.0, return_dict=False)[0]
            stepped.append(out.permute(1, 0, 2, 3).unsqueeze(0))
        stepped = torch.cat(stepped)
        cut = cuts[i] if cuts is not None else draw_offsets(overlaps, cut_gen)
        x = stitch_x0(stepped, starts, clen, frames, cut)  # any per-chunk tensor: here the chunks' x_{t-1}
        if trace is not None:
            trace(i, len(timesteps), x, stepped, cut)
    return x.reshape(1, c, frames, h, w)


def canvas_frames(images: torch.Tensor, canvas: tuple[int, int], device) -> torch.Tensor:
    """IMAGE (T, H, W, 3) -> (T, 3, H', W') in [0, 1] on the canvas, stretched as officially (PIL resize to
    1280x720; a 16:9 StreamingSVD video keeps its aspect)."""
    px = images.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32)
    return resize_frames(px, *canvas).clamp(0, 1)


@torch.no_grad()
def enhance_video(model: I2VGenXLEnhancer, images: torch.Tensor, anchor: torch.Tensor | None = None,
                  prompt: str = OFFICIAL_PROMPT, negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
                  steps: int = OFFICIAL_STEPS, strength: float = OFFICIAL_STRENGTH, guidance: float = OFFICIAL_GUIDANCE,
                  fps: int = OFFICIAL_FPS, chunk: int = OFFICIAL_CHUNK, overlap: int = OFFICIAL_OVERLAP,
                  blending: bool = True, seed: int = 0, canvas: tuple[int, int] | None = None,
                  callback: Callable[[int, int, torch.Tensor], None] | None = None, rows_together: bool = True,
                  cuts=None) -> torch.Tensor:
    """IMAGE (T, H, W, 3) in [0, 1] -> the enhanced IMAGE (T, canvas H, canvas W, 3), every frame kept.

    anchor: IMAGE (1, H, W, 3), the image the keyframes (or, without blending, the whole video) are conditioned on;
    official: the StreamingSVD input image; default: the first frame. blending=True is the official
    `--use_randomized_blending` path: the first frame of each chunk is enhanced first as a short video conditioned
    on the anchor, and chunk k is then conditioned on enhanced keyframe k. blending=False: one chunk of every frame
    conditioned on the anchor (the official default). callback(step, total, latent) after each step of the main pass.
    cuts: (steps run x boundaries) instead of the seeded draws of the main pass."""
    check_images(images)
    if anchor is not None:
        check_images(anchor)
    check_settings(steps, strength, guidance, fps)
    canvas = tuple(canvas or model.canvas)
    f = model.latent_factor
    if canvas[0] % f or canvas[1] % f:
        raise ValueError(f"canvas {canvas[1]}x{canvas[0]}: both sides must be multiples of {f} (the VAE's factor)")
    t_ = images.shape[0]
    if not blending:
        chunk = t_
    elif overlap < 1 or chunk <= overlap:
        raise ValueError(f"chunk {chunk} / overlap {overlap}: chunk must exceed overlap >= 1 (official 38 / 12)")
    dev = model.device
    gen = torch.Generator().manual_seed(int(seed))
    context, negative_context = (e.to(dev) for e in model.encode_prompt(prompt, negative_prompt))
    anchor_px = canvas_frames(anchor[:1] if anchor is not None else images[:1], canvas, dev)[0]
    scale = model.latent_scale

    def encode(frames):  # IMAGE frames (any device) -> latent; pixels visit the device one frame at a time
        return torch.cat([encode_frames(model.vae, canvas_frames(frames[i:i + 1], canvas, dev) * 2 - 1, scale, gen,
                                        dev, 1) for i in range(frames.shape[0])], dim=2)

    def run(frames, keys, chunk_, overlap_, trace=None, cuts_=None):
        return enhance_latents(model, encode(frames), keys, context, negative_context, gen, chunk_, overlap_, steps,
                               strength, guidance, fps, seed, cuts_, trace, rows_together)

    starts = chunk_layout(t_, chunk, overlap)
    if blending:
        first = model.encode_keyframe(anchor_px, gen)
        key_lat = run(images[starts], [first], len(starts), 0)
        key_img = decode_latents(model.vae, key_lat, scale, 1, dev).permute(0, 3, 1, 2)  # (K, 3, H, W) in [0, 1]
        keys = [model.encode_keyframe(key_img[k], gen) for k in range(len(starts))]
        del key_lat, key_img
    else:
        keys = [model.encode_keyframe(anchor_px, gen)]
    trace = (lambda i, n, x, _chunks, _cut: callback(i, n, x)) if callback is not None else None
    out = run(images, keys, chunk, overlap, trace, cuts)
    return decode_latents(model.vae, out, scale, 1, images.device)
