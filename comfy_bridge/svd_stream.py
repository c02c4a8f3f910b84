"""The StreamingSVD autoregressive loop on ComfyUI's own SVD MODEL (reference official_streamingsvd.md §4-5).

Every chunk is sampled by comfy.sample.sample_custom (ComfyUI's sampler objects, model loading, its
interrupt checks), with the MODEL patched by comfy_bridge.svd_patch (CAM on the last 7 frames of the previous
chunk) and the conditioning SVD_img2vid.extra_conds expects:
* positive = [image embedding [1,1,D], {concat_latent_image: the conditioner encoder's mode latent of image + 0.02 U,
  unscaled (c_concat is not passed through process_latent_in), fps 7 (ComfyUI embeds fps - 1 = 6, the official
  fps_id), motion_bucket_id 127, augmentation_level 0.02}]; negative = the same with embedding and concat zeroed
  (the official uncond; the vector is kept);
* guidance: the official per-frame linear scale 1.5 -> 3 applied to the cond/uncond predictions by a post-CFG
  function (exact; VideoLinearCFGGuidance computes the same in x - pred space, which loses ~4e-5 to float32
  cancellation at sigma 700); cfg 3 keeps ComfyUI from skipping the uncond pass;
* initial noise: the official randn draw; ComfyUI scales it by sqrt(1 + sigma_0^2) when sigma_0 >= sigma_max
  (700 for SVD), which is the official `x *= sqrt(1 + sigma_0^2)`;
* decode: LATENT / 1 (ComfyUI's LATENT is the official z / 0.18215) in calls of 8 frames (the temporal decoder
  treats one call as one clip; VAE.decode would split by free memory), clamped to [-1, 1].
Pixels here are [F, 3, H, W] in [-1, 1]; ComfyUI IMAGEs are converted by the nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import torch

from ..streamingt2v_core.svd import config
from ..streamingt2v_core.svd.conditioning import control_frames, cond_frames, guide, keep_new_frames, \
    official_clip_input
from ..streamingt2v_core.svd.noise import ChunkDraws
from ..streamingt2v_core.svd.sigmas import official_sigmas
from .svd_patch import streaming_svd_patch

LATENT_FACTOR = 8


def image_embedding(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """The CLIP image embedding [1, 1, D] of `image` [1, 3, H, W] in [-1, 1] through ComfyUI's CLIP_VISION
    model, with the official preprocessing (the whole frame squashed to 224x224; ComfyUI's encode_image crops
    the centre and rounds to uint8, which gives another embedding for 16:9 frames)."""
    mm.load_model_gpu(clip_vision.patcher)
    pixels = official_clip_input(image.to(clip_vision.load_device, torch.float32))
    out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    return out[2].to(mm.intermediate_device(), torch.float32)[:, None]  # image_embeds, as encode_image gives


def concat_latent(concat_encoder, pixels: torch.Tensor) -> torch.Tensor:
    """The conditioner encoder's mode latent [1, 4, h, w] (unscaled) of `pixels` [1, 3, H, W] in [-1, 1];
    `concat_encoder`: svd_patch.build_concat_encoder (fp32)."""
    mm.load_model_gpu(concat_encoder)
    with torch.no_grad():
        z = concat_encoder.model(pixels.to(concat_encoder.load_device, torch.float32))
    return z.to(mm.intermediate_device(), torch.float32)


def decode_frames(vae, latents: torch.Tensor, frames_per_call: int = config.VAE_DECODE_FRAMES) -> torch.Tensor:
    """ComfyUI LATENT [F, 4, h, w] to pixels [F, 3, H, W] in [-1, 1], `frames_per_call` frames per decoder call
    (official 8: 25 = 8 + 8 + 8 + 1)."""
    out = []
    for i in range(0, latents.shape[0], frames_per_call):
        z = latents[i:i + frames_per_call]
        need = vae.memory_used_decode(z.shape, vae.vae_dtype) * z.shape[0]
        mm.load_models_gpu([vae.patcher], memory_required=need, force_full_load=vae.disable_offload)
        with torch.no_grad():
            x = vae.first_stage_model.decode(z.to(vae.device, vae.vae_dtype))
        out.append(x.to(mm.intermediate_device(), torch.float32).clamp(-1.0, 1.0))
    return torch.cat(out)


def svd_conds(embedding: torch.Tensor, concat: torch.Tensor, fps: int = config.COMFY_FPS,
              motion_bucket_id: int = config.MOTION_BUCKET, augmentation_level: float = config.COND_AUG):
    """(positive, negative) CONDITIONING for ComfyUI's SVD_img2vid: uncond = embedding and concat zeroed."""
    extra = {"fps": fps, "motion_bucket_id": motion_bucket_id, "augmentation_level": augmentation_level}
    positive = [[embedding, dict(extra, concat_latent_image=concat)]]
    negative = [[torch.zeros_like(embedding), dict(extra, concat_latent_image=torch.zeros_like(concat))]]
    return positive, negative


def with_linear_guidance(model, frames: int = config.FRAMES):
    """A clone of `model` whose CFG result is the official per-frame guidance (uncond + s_f (cond - uncond),
    s = linspace(1.5, 3, frames)), computed from the denoised predictions; it replaces any earlier CFG result."""
    def linear_guidance(args):
        return guide(args["uncond_denoised"], args["cond_denoised"], frames)

    m = model.clone()
    m.set_model_sampler_post_cfg_function(linear_guidance)
    return m


@dataclass
class StreamResult:
    chunks: list = field(default_factory=list)  # per generated chunk: all 25 frames [25, 3, H, W] in [-1, 1]
    latents: list = field(default_factory=list)  # per generated chunk: ComfyUI LATENT [25, 4, h, w]
    frames: torch.Tensor | None = None  # the input frames + 18 new frames per chunk, [-1, 1]
    generator_state: torch.Tensor | None = None  # the draws' generator after the last chunk (resumes the stream)
    embeddings: dict = field(default_factory=dict)  # SVD image index -> its CLIP embedding [1, 1, D]


def size_problem(height: int, width: int) -> str | None:
    """Why frames of this size cannot be a StreamingSVD video (None: they can)."""
    # the latent is H/8 x W/8 and the UNet halves it three times: sides must be multiples of 64
    if height % 64 or width % 64:
        return (f"{width}x{height} pixels (width x height): both sides must be multiples of 64 (the SVD latent is 1/8 of the "
                f"frame and the UNet halves it 3 times); resize the frames, e.g. to 1024x576 (the official size)")
    return None


def stream(model, cam, mergers, concat_encoder, vae, frames: torch.Tensor, chunks: int, seed: int,
           sigmas: torch.Tensor | None = None, sampler=None, clip_vision=None, image: torch.Tensor | None = None,
           embedding: torch.Tensor | None = None, generator: torch.Generator | None = None,
           tail: torch.Tensor | None = None, first_chunk: int = 0, embeddings: dict | None = None,
           on_step: Callable | None = None, on_chunk: Callable | None = None) -> StreamResult:
    """`chunks` StreamingSVD chunks after `frames` ([N >= 7, 3, H, W] in [-1, 1]: the first chunk or any video).

    model: ComfyUI's SVD MODEL; cam/mergers/concat_encoder: svd_patch.build_cam/build_mergers/
    build_concat_encoder (the conditioner's own encoder makes the concat latent, as officially); vae: the SVD
    VAE (decode); image: the SVD image [1, 3, H, W] (default frame 6 of `frames`), or one per chunk
    [K, 3, H, W] (chunk c takes image min(c, K-1): per-chunk anchors); embedding: the CLIP embedding [1, 1, D]
    of a single image (default: through `clip_vision`); seed: one generator for the whole stream (ChunkDraws: per
    chunk the uniform augmentation, then the initial noise); sigmas: default the official schedule for 30
    steps; sampler: default Euler. A resumed stream: generator (continue these draws instead of seeding one
    with `seed`), tail (the exact [-1, 1] frames the last chunk ended with; default the end of `frames`),
    first_chunk (chunks sampled before: chunk c of this call takes image min(first_chunk + c, K-1)),
    embeddings (image index -> CLIP embedding, as StreamResult.embeddings gives them). on_step(chunk, step, total_steps, x0) after every sampler step;
    on_chunk(chunk, new_frames) after each chunk."""
    n, _, height, width = frames.shape
    if n < config.COND_FRAMES:
        raise ValueError(f"frames: {n} frames given, at least {config.COND_FRAMES} needed (the CAM's control frames)")
    problem = size_problem(height, width)
    if problem:
        raise ValueError(f"frames: {problem}")
    if image is None:
        image = frames[min(config.SVD_IMAGE_INDEX, n - 1)][None]
    if embedding is not None and image.shape[0] != 1:
        raise ValueError("embedding: one embedding is given for several SVD images; give one image or no embedding")
    sigmas = (official_sigmas(config.STEPS) if sigmas is None else sigmas).float()
    sampler = comfy.samplers.ksampler("euler") if sampler is None else sampler
    if embedding is None and clip_vision is None:
        raise ValueError("clip_vision: a CLIP vision model (or an image embedding) is needed")
    embeddings = dict(embeddings or ({0: embedding} if embedding is not None else {}))
    draws = ChunkDraws(seed if generator is None else generator, height, width, config.FRAMES)
    guided = with_linear_guidance(model)
    result = StreamResult()
    video, prev = [frames], (frames if tail is None else tail)
    for c in range(chunks):
        draw = draws.next()
        k = min(first_chunk + c, image.shape[0] - 1)
        if k not in embeddings:
            embeddings[k] = image_embedding(clip_vision, image[k:k + 1])
        concat = concat_latent(concat_encoder, cond_frames(image[k:k + 1], draw.cond_aug_uniform.to(image)))
        positive, negative = svd_conds(embeddings[k], concat)
        patched = streaming_svd_patch(guided, cam, mergers, control_frames(prev))
        zeros = torch.zeros(config.FRAMES, 4, height // LATENT_FACTOR, width // LATENT_FACTOR)

        def callback(step, x0, _x, total, c=c):
            if on_step is not None:
                on_step(c, step, total, x0)

        latents = comfy.sample.sample_custom(patched, draw.init_noise, config.GUIDANCE_MAX, sampler, sigmas,
                                             positive, negative, zeros, callback=callback, disable_pbar=True,
                                             seed=seed)
        latents = latents.to(torch.float32)
        chunk = decode_frames(vae, latents)
        result.latents.append(latents.cpu())
        result.chunks.append(chunk.cpu())
        new = keep_new_frames(chunk).cpu()
        video.append(new)
        prev = chunk.cpu()
        if on_chunk is not None:
            on_chunk(c, new)
    result.frames = torch.cat(video)
    result.generator_state = draws.generator.get_state()
    result.embeddings = embeddings
    return result
