"""Refinement of a whole video: SDEdit over the whole-video latent with randomized blending of chunk x0s.

`refine_latents` is the official `GaussianDiffusion_SDEdit.sample` with `model_fn` (reference/official_refiner.md
§8-11), with all chunks of a solver step run as one batch (guidance rows batched too), no dropped frames
(see cuts.chunk_starts) and every random draw from seeded torch generators. The enhancer (protocol.Enhancer)
runs its own sampler; this module only hands it the blended x0 of every step.
`refine_video` adds the pixel side: resize to fit the canvas (256 -> 720, bicubic), pad black, encode frame
slices (posterior sample x scale), noise to t_start, refine, decode in slices, crop back to the content.
The whole-video latent stays on the model's device; pixels move there one slice at a time.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable

import torch

from ..common.frames import center_box, crop_frames, fit_size, pad_frames, resize_frames
from .cuts import boundary_overlaps, chunk_starts, draw_offsets, split_chunks, stitch_x0

if TYPE_CHECKING:
    from .protocol import Enhancer

StepCallback = Callable[[int, int, torch.Tensor], None]  # (step, total_steps, x0_blended)


def _offsets_table(offsets, steps: int, overlaps: list[int]) -> torch.Tensor | None:
    if offsets is None:
        return None
    table = torch.as_tensor(offsets, dtype=torch.long).reshape(steps, -1) if len(overlaps) else torch.zeros(steps, 0, dtype=torch.long)
    if table.shape[1] == len(overlaps) + 1 and bool((table[:, 0] == 0).all()):
        table = table[:, 1:]  # the oracle records [0, r...]: chunk 0 always has offset 0
    if table.shape != (steps, len(overlaps)):
        raise ValueError(f"offsets must be (steps={steps}, boundaries={len(overlaps)}), got {tuple(table.shape)}")
    return table


def _chunk_x0(refiner: "Enhancer", x_in, t, starts, clen, context, negative_context, guidance, rescale, chunk_batch,
              rows_together=True):
    chunks = split_chunks(x_in, starts, clen)  # (K*B, C, clen, h, w)
    b = x_in.shape[0]
    per = len(starts) if not chunk_batch else max(1, int(chunk_batch))
    ctx, neg = context.expand(b, -1, -1), negative_context.expand(b, -1, -1)
    outs = []
    for i in range(0, len(starts), per):
        part = chunks[i * b:(i + per) * b]
        k = part.shape[0] // b
        outs.append(refiner.predict_x0(part, t, ctx.repeat(k, 1, 1), neg.repeat(k, 1, 1), guidance, rescale,
                                       rows_together))
    return torch.cat(outs)


def check_contexts(context, negative_context, batch: int, guidance: float = 7.5, rows_together: bool = True) -> None:
    """ValueError unless context (and negative_context, which guidance 1 does not read) are (1 or `batch`,
    tokens, width) text embeddings of one width, and of one token count when their rows run as one batch."""
    used = [("context", context)] + ([("negative_context", negative_context)] if guidance != 1.0 else [])
    for name, x in used:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be (1, tokens, width) text embeddings from the enhancer's encode_prompt, "
                             f"got {shape}")
        if x.shape[0] not in (1, batch):
            raise ValueError(f"{name} has batch {x.shape[0]}, the latent has batch {batch}: give one row per video, "
                             "or 1 to share it")
    if len(used) == 2:
        what = "width" if negative_context.shape[2] != context.shape[2] else "token count"
        if what == "width" or (rows_together and negative_context.shape[1] != context.shape[1]):
            raise ValueError(f"negative_context {tuple(negative_context.shape)} does not match context "
                             f"{tuple(context.shape)} in {what}: encode both with one encode_prompt call")


@torch.no_grad()
def refine_latents(refiner: "Enhancer", noised, context, negative_context, chunk=24, overlap=8, steps=30, t_start=599,
                   offsets=None, brownian_noise=None, seed=0, guidance=7.5, rescale=0.2, chunk_batch=None,
                   callback: StepCallback | None = None, rows_together: bool = True) -> torch.Tensor:
    """Denoise the whole-video latent `noised` (B, 4, F, h, w), already noised (VP) to t_start; returns x0.

    offsets (steps x boundaries int) and brownian_noise (steps - 1 normalised increments) replace the random
    draws when given. Otherwise offsets come from torch.Generator().manual_seed(seed) and the enhancer's own
    sampler noise from `seed` (MS-Vid2Vid: the Brownian tree of entropy `seed`, 0 the official tree); the
    enhancer's sampler (Enhancer.sample) runs the steps, fed the blended x0. chunk_batch caps how many chunks
    run per UNet call; rows_together=False runs the two guidance rows as two calls (half the UNet activations).
    """
    if noised.ndim != 5:
        raise ValueError(f"noised must be (B, 4, F, h, w), got {tuple(noised.shape)}")
    if not noised.is_floating_point():
        raise ValueError(f"noised is {noised.dtype}; expected a float latent (B, 4, F, h, w): convert it with .float()")
    check_contexts(context, negative_context, noised.shape[0], guidance, rows_together)
    if int(steps) < 1:
        raise ValueError(f"steps is {steps}; it must be at least 1 (official 30)")
    if int(t_start) < 0:
        raise ValueError(f"t_start is {t_start}; the SDEdit start must be a timestep >= 0 (official 599)")
    frames = noised.shape[2]
    refiner.check_latent_size(*noised.shape[-2:])
    starts = chunk_starts(frames, chunk, overlap)
    clen = min(chunk, frames)
    overlaps = boundary_overlaps(starts, clen)
    table = _offsets_table(offsets, steps, overlaps)
    if brownian_noise is not None and len(brownian_noise) < steps - 1:
        raise ValueError(f"brownian_noise has {len(brownian_noise)} increments; {steps} steps need {steps - 1}")
    gen = torch.Generator().manual_seed(int(seed))
    device = noised.device
    context, negative_context = context.to(device), negative_context.to(device)

    def blended(x_in: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        x0 = _chunk_x0(refiner, x_in, t, starts, clen, context, negative_context, guidance, rescale, chunk_batch,
                       rows_together)
        cut = table[i] if table is not None else draw_offsets(overlaps, gen)
        out = stitch_x0(x0, starts, clen, frames, cut)
        if callback is not None:
            callback(i, steps, out)
        return out

    return refiner.sample(noised.float(), blended, steps, t_start, seed, brownian_noise)


_ESTIMATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def chunk_activation_bytes(refiner: "Enhancer", frames: int, rows: int = 2, feed_forward_chunk: int | None = None) -> int:
    """Peak bytes of the activations of one UNet call on one chunk of `frames` frames on the refiner's canvas,
    `rows` rows per chunk (2: guidance rows batched), optionally with the feed-forward in token chunks.

    Counted on a meta-device copy of the UNet (memory.activation_peak_bytes: no weights, no memory used), so
    the figure follows the real architecture and canvas instead of a rule of thumb. Cached per refiner."""
    from ..common import memory

    h, w = refiner.canvas[0] // refiner.latent_factor, refiner.canvas[1] // refiner.latent_factor
    key = (int(frames), int(rows), feed_forward_chunk, h, w)
    cache = _ESTIMATES.setdefault(refiner, {})
    if key not in cache:
        unet = refiner.meta_unet()
        memory.set_feed_forward_chunking(unet, feed_forward_chunk)
        channels = unet.config.in_channels
        with torch.device("meta"):
            x = torch.empty(rows, channels, int(frames), h, w, dtype=refiner.dtype)
            ctx = torch.empty(rows, 77, unet.config.cross_attention_dim, dtype=refiner.dtype)
            t = torch.zeros(rows, dtype=torch.long)
        cache[key] = memory.activation_peak_bytes(lambda: unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0])
    return cache[key]


# --------------------------------------------------------------------------------------------------
# Pixels

def plan_canvas(h: int, w: int, canvas: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Resized content size and its box on the canvas, for frames of h x w."""
    ch, cw = canvas
    rh, rw = fit_size(h, w, ch, cw)
    return (rh, rw), center_box(rh, rw, ch, cw)


def check_frame_size(h: int, w: int, canvas: tuple[int, int], min_side: int = 8) -> None:
    (rh, rw), _ = plan_canvas(h, w, canvas)
    if rh < min_side or rw < min_side:
        raise ValueError(f"images of {w}x{h} become {rw}x{rh} on the {canvas[1]}x{canvas[0]} refiner canvas; "
                         f"both sides must be at least {min_side} px after resizing: use frames with an aspect ratio "
                         f"between 1:{canvas[1] // min_side} and {canvas[1] // min_side}:1")


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, scale: float, generator: torch.Generator, device, slice_size: int = 4) -> torch.Tensor:
    """(T, 3, H, W) in [-1, 1] (any device) -> latent (1, 4, T, h, w) on `device`: posterior sample x scale.

    The posterior noise is drawn on the CPU generator, one slice at a time (official: per-frame randn)."""
    parts = []
    vdtype = next(vae.parameters()).dtype
    for i in range(0, frames.shape[0], slice_size):
        px = frames[i:i + slice_size].to(device=device, dtype=vdtype)
        dist = vae.encode(px).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator).to(device=device, dtype=dist.mean.dtype)
        parts.append(((dist.mean + dist.std * eps) * scale).float())
    return torch.cat(parts).permute(1, 0, 2, 3).unsqueeze(0)


@torch.no_grad()
def decode_latents(vae, latent: torch.Tensor, scale: float, slice_size: int = 4, out_device="cpu",
                   box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """(1, 4, T, h, w) -> (T, H, W, 3) in [0, 1] on out_device, decoded and cropped one slice at a time."""
    vdtype = next(vae.parameters()).dtype
    z = latent[0].permute(1, 0, 2, 3)
    frames = []
    for i in range(0, z.shape[0], slice_size):
        px = vae.decode((z[i:i + slice_size] / scale).to(vdtype)).sample.float()
        if box is not None:
            px = crop_frames(px, box)
        frames.append(((px.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).to(out_device))
    return torch.cat(frames)


@torch.no_grad()
def preview(refiner: "Enhancer", x0: torch.Tensor) -> torch.Tensor | None:
    """IMAGE [H, W, 3] in [0, 1] on the CPU: the middle frame of the whole-video x0 (B, 4, F, h, w), decoded
    (None without an autoencoder). What a progress bar shows while the video refines."""
    vae = refiner.vae
    if vae is None:
        return None
    mid = x0[:, :, x0.shape[2] // 2:x0.shape[2] // 2 + 1]
    px = vae.decode((mid[0].permute(1, 0, 2, 3) / refiner.latent_scale).to(next(vae.parameters()).dtype)).sample
    return ((px[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu()


def check_images(images) -> None:
    """ValueError unless `images` is a ComfyUI IMAGE batch: float (T, H, W, 3) in [0, 1], T >= 1."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be an IMAGE batch, a float tensor (T, H, W, 3), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3:
        hint = ""
        if images.ndim == 4 and images.shape[1] == 3:
            hint = ": frames as (T, 3, H, W) become this with images.permute(0, 2, 3, 1)"
        raise ValueError(f"images must be an IMAGE batch (T, H, W, 3), got {tuple(images.shape)}{hint}")
    if images.shape[0] < 1:
        raise ValueError("images holds no frames; give at least 1")
    if not images.is_floating_point():
        raise ValueError(f"images is {images.dtype}; an IMAGE is float in [0, 1]: convert it with .float()"
                         + (" / 255" if images.dtype == torch.uint8 else ""))
    if images.is_meta:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if low < -0.5 or high > 1.5:  # resampling overshoot passes; 0..255 or [-1, 1] pixels do not
        raise ValueError(f"images values span {low:.4g}..{high:.4g}; an IMAGE is in [0, 1]: pixels in 0..255 "
                         "become x / 255, pixels in [-1, 1] (x + 1) / 2")


@torch.no_grad()
def refine_video(refiner: "Enhancer", images: torch.Tensor, prompt: str, negative_prompt: str = "", strength_step: int = 600,
                 steps: int = 30, guidance: float = 7.5, rescale: float = 0.2, chunk: int = 24, overlap: int = 8,
                 seed: int = 0, crop: bool = True, canvas: tuple[int, int] | None = None, slice_size: int = 1,
                 chunk_batch: int | None = None, callback: StepCallback | None = None,
                 offsets=None, brownian_noise=None, rows_together: bool = True) -> torch.Tensor:
    """IMAGE (T, H, W, 3) in [0, 1] -> refined IMAGE, cropped to the content unless crop=False.

    strength_step: SDEdit start as a step of the 1000 (official 600, i.e. t = 599).
    slice_size: frames per VAE call (official 1: a 1280x720 frame alone needs gigabytes of decoder activations).
    Seeds: posterior and initial noise come from one CPU generator seeded with `seed`, the offsets from
    another, the Brownian tree from entropy `seed` (so a seed reproduces a video on a given device)."""
    check_images(images)
    if int(strength_step) < 1:
        raise ValueError(f"strength_step is {strength_step}; it must be at least 1 (official 600: t = 599)")
    if refiner.vae is None:
        raise RuntimeError("this refiner was loaded without its autoencoder (v2-1_512-ema-pruned.ckpt / vae.safetensors)")
    canvas = canvas or refiner.canvas
    t_, h, w, _ = images.shape
    check_frame_size(h, w, canvas)
    (rh, rw), box = plan_canvas(h, w, canvas)
    device = refiner.device
    context, negative_context = refiner.encode_prompt(prompt, negative_prompt)
    gen = torch.Generator().manual_seed(int(seed))

    # pixels travel to the device one slice at a time, resized and padded there
    def prepared(i0, i1):
        px = images[i0:i1].permute(0, 3, 1, 2).to(device=device, dtype=torch.float32) * 2 - 1
        return pad_frames(resize_frames(px, rh, rw).clamp(-1, 1), box, canvas[0], canvas[1], value=-1.0)

    parts = [encode_frames(refiner.vae, prepared(i, i + slice_size), refiner.latent_scale, gen, device, slice_size)
             for i in range(0, t_, slice_size)]
    latent = torch.cat(parts, dim=2)
    t_first = refiner.first_timestep(steps, strength_step - 1)
    noise = torch.randn(latent.shape, generator=gen).to(device)
    alpha, sigma = refiner.alpha_sigma(t_first)
    noised = alpha * latent + sigma * noise
    del latent, noise
    out = refine_latents(refiner, noised, context, negative_context, chunk=chunk, overlap=overlap, steps=steps,
                         t_start=strength_step - 1, offsets=offsets, brownian_noise=brownian_noise,
                         seed=int(seed), guidance=guidance, rescale=rescale, chunk_batch=chunk_batch,
                         callback=callback, rows_together=rows_together)
    return decode_latents(refiner.vae, out, refiner.latent_scale, slice_size, images.device, box if crop else None)
