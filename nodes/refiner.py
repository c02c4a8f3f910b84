"""Stage 3 nodes: load the refiner (MS-Vid2Vid-XL, or a diffusers text-to-video model) and refine a video
with randomized blending (the whole-video latent denoised in overlapping chunks, random cuts per step)."""
from __future__ import annotations

import contextlib
import logging
import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..streamingt2v_core.memory import (FEED_FORWARD_CHUNK, MEMORY_MODES, low_memory, memory_mode_problem,
                                        wants_low_memory)
from .errors import advise_out_of_memory
from .loader import DTYPES, PatchedModel, _missing_message, resolve_dtype
from .stream import SEED_MAX, preview

log = logging.getLogger("StreamingT2V")

FOLDER = "streamingt2v_refiner"
RefinerModel = io.Custom("STREAMINGT2V_REFINER")
OUTPUT_CHOICES = ["crop to content", "padded canvas (official 1280x720)"]
# what marks a folder as one refiner: official ModelScope files, our converted files, or a diffusers T2V folder
_MARKERS = ("non_ema_0035000.pth", "unet.safetensors", "model_index.json", "unet/config.json")


def _is_refiner_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _MARKERS)


def _refiner_folders() -> dict:
    """Name -> path of every refiner folder in the registered models/streamingt2v_refiner paths (a UNet file
    alone cannot refine pixels: the text encoder and autoencoder live beside it). A registered path that is
    itself a refiner folder is offered under its own name."""
    found = {}
    for root in folder_paths.get_folder_paths(FOLDER):
        if _is_refiner_folder(root):
            found.setdefault(os.path.basename(os.path.normpath(root)), root)
        elif os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                if _is_refiner_folder(os.path.join(root, name)):
                    found.setdefault(name, os.path.join(root, name))
    return found


def refiner_choices() -> list:
    return sorted(_refiner_folders())


def refiner_path(name: str) -> str | None:
    return _refiner_folders().get(name)


class LoadStreamingT2VRefiner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadStreamingT2VRefiner",
            display_name="Load StreamingT2V Refiner",
            category="StreamingT2V/loaders",
            description="Loads the refiner from models/streamingt2v_refiner: the MS-Vid2Vid-XL folder "
                        "(damo/Video-to-Video: non_ema_0035000.pth, open_clip_pytorch_model.bin, "
                        "v2-1_512-ema-pruned.ckpt; read with torch.load(weights_only=True), memory-mapped), a "
                        "converted folder (unet/text_encoder/vae.safetensors), or a diffusers text-to-video "
                        "folder such as zeroscope_v2_XL (refines with its own scheduler).",
            inputs=[
                io.Combo.Input("refiner_name", options=refiner_choices(),
                               tooltip="A folder in models/streamingt2v_refiner."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="UNet weight dtype (text encoder and autoencoder stay fp32). auto: what "
                                       "ComfyUI picks for this device (fp32 on the CPU); the official run is fp16."),
            ],
            outputs=[RefinerModel.Output("refiner", display_name="refiner")],
        )

    @classmethod
    def validate_inputs(cls, refiner_name, dtype="auto"):
        if refiner_path(refiner_name) is None:
            return _missing_message("refiner_name", refiner_name, FOLDER, refiner_choices())
        if dtype not in DTYPES:
            return f"dtype: '{dtype}' is not one of {DTYPES}"
        return True

    @classmethod
    def execute(cls, refiner_name, dtype="auto") -> io.NodeOutput:
        from ..streamingt2v_core.refiner import load_refiner

        path = refiner_path(refiner_name)
        if path is None:
            raise FileNotFoundError(_missing_message("refiner_name", refiner_name, FOLDER, refiner_choices()))
        refiner = load_refiner(path, device="cpu", dtype=resolve_dtype(dtype, 1_411_000_000))
        log.info("StreamingT2V: loaded refiner %s (%s family, UNet %s)", refiner_name, refiner.family, refiner.dtype)
        return io.NodeOutput(PatchedModel(refiner, refiner_name))


def _chunking_errors(chunk: int, overlap: int, steps: int, strength_step: int) -> list:
    errors = []
    if overlap < 1:
        errors.append(f"overlap: {overlap} is too small; allowed 1..chunk-1 (official 8)")
    if chunk > 1024:
        errors.append(f"chunk: {chunk} is too large; allowed overlap+1..1024 (official 24)")
    if chunk <= overlap:
        errors.append(f"chunk: {chunk} must be larger than overlap ({overlap}); allowed chunk >= overlap+1 "
                      f"(official chunk 24, overlap 8)")
    if steps < 1:
        errors.append(f"steps: {steps}; allowed 1..1000 (official 30)")
    if not 2 <= strength_step <= 999:
        errors.append(f"strength_step: {strength_step}; allowed 2..999 (official 600)")
    return errors


class RandomizedBlendRefiner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RandomizedBlendRefiner",
            display_name="Randomized Blend Refiner",
            category="StreamingT2V/refine",
            description="StreamingT2V's refinement: the video is resized to the refiner's canvas (256 -> 720, "
                        "padded to 1280x720), encoded, noised to strength_step and denoised as one latent in "
                        "overlapping chunks; at every step a random cut in each overlap picks which chunk's "
                        "prediction each frame takes, so chunk borders leave no seams. No frame is dropped; "
                        "the seed reproduces the result.",
            inputs=[
                RefinerModel.Input("refiner"),
                io.Image.Input("images", tooltip="The video: frames in the batch dimension."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Caption; the official pipeline encodes it as '<prompt>, '."),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="Official: empty."),
                io.Int.Input("strength_step", default=600, min=2, max=999,
                             tooltip="SDEdit start step of 1000 (official 600 = t 599): higher changes more."),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Solver steps (official 30)."),
                io.Float.Input("guidance", default=7.5, min=0.0, max=50.0, step=0.1,
                               tooltip="Classifier-free guidance scale (official 7.5)."),
                io.Float.Input("rescale", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Guidance rescale by the chunk's std (official 0.2)."),
                io.Int.Input("chunk", default=24, min=2, max=1024, tooltip="Frames per chunk (official 24)."),
                io.Int.Input("overlap", default=8, min=1, max=1023,
                             tooltip="Frames shared by neighbouring chunks, where the random cut falls (official 8)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seeds the VAE posterior and initial noise, the cuts and the Brownian noise."),
                io.Combo.Input("output", options=OUTPUT_CHOICES, default=OUTPUT_CHOICES[0],
                               tooltip="crop to content: the refined frames at the resized size (720x720 for "
                                       "square input). padded canvas: the official 1280x720 frame with its bars."),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip="auto: as many chunks per UNet call as fit, else low vram. max speed: as "
                                       "many chunks per call as fit. low vram: one chunk and one guidance row per "
                                       "call, feed-forwards in token chunks, the text encoder visits the device "
                                       "only to encode the prompt (same frames; at 1280x720 about 7.5 GB instead "
                                       "of 18 GB)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, strength_step=600, steps=30, chunk=24, overlap=8, output=OUTPUT_CHOICES[0],
                        memory="auto"):
        errors = _chunking_errors(int(chunk), int(overlap), int(steps), int(strength_step))
        if output not in OUTPUT_CHOICES:
            errors.append(f"output: '{output}' is not one of {OUTPUT_CHOICES}")
        if memory_mode_problem(memory):
            errors.append(memory_mode_problem(memory))
        return "; ".join(errors) if errors else True

    @classmethod
    def execute(cls, refiner, images, prompt, negative_prompt, strength_step, steps, guidance, rescale, chunk,
                overlap, seed, output, memory="auto") -> io.NodeOutput:
        from ..streamingt2v_core.refine import check_frame_size, chunk_activation_bytes, refine_video

        errors = _chunking_errors(chunk, overlap, steps, strength_step)
        if errors:
            raise ValueError("; ".join(errors))
        canvas = refiner.module.canvas
        check_frame_size(int(images.shape[1]), int(images.shape[2]), canvas)  # before any heavy work

        pbar = comfy.utils.ProgressBar(steps)

        def on_step(i, total, x0):
            mm.throw_exception_if_processing_interrupted()
            frame = None
            if rf.vae is not None:  # preview: the middle frame's current x0 prediction
                mid = x0[:, :, x0.shape[2] // 2:x0.shape[2] // 2 + 1]
                with torch.no_grad():
                    px = rf.vae.decode((mid[0].permute(1, 0, 2, 3) / rf.latent_scale).to(next(rf.vae.parameters()).dtype)).sample
                frame = preview(((px[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu())
            pbar.update_absolute(i + 1, total, frame)

        try:
            # activations of one chunk per UNet call, counted on a meta copy of the UNet at this canvas, plus
            # 15% for what the count leaves out (allocator rounding, kernel workspaces): for "low vram" what
            # its plan needs (one row per call, feed-forwards in chunks), else what the fast plan needs
            clen = min(int(chunk), int(images.shape[0]))
            if memory == "low vram":
                per_chunk = int(1.15 * chunk_activation_bytes(refiner.module, clen, 1, FEED_FORWARD_CHUNK))
            else:
                per_chunk = int(1.15 * chunk_activation_bytes(refiner.module, clen, 1 if float(guidance) == 1.0 else 2))
            rf = refiner.on_device(memory_required=per_chunk)
            accelerator = not mm.is_device_cpu(rf.device)
            free = mm.get_free_memory(rf.device)
            low = wants_low_memory(memory, accelerator, free, per_chunk)
            if low:  # one chunk and one guidance row per UNet call
                chunk_batch = 1
                parts = [p for p in ("text_encoder",) if isinstance(getattr(rf, p, None), torch.nn.Module)]
                plan = low_memory(rf, rf.device, parts, offload_device=mm.unet_offload_device())
            else:
                # on an accelerator: all chunks of a solver step in one UNet call, or as few as the free memory
                # allows; on the CPU batching gains nothing (bench/refiner_bench.py) and costs memory
                chunk_batch = max(1, int(0.8 * free) // per_chunk) if accelerator else 1
                plan = contextlib.nullcontext()
            log.info("StreamingT2V: refiner memory plan: %s, %d chunk(s) per UNet call (%.2f GiB each, %.2f GiB free)",
                     "low vram" if low else "fast", chunk_batch, per_chunk / 2 ** 30, free / 2 ** 30)
            with plan:
                out = refine_video(rf, images[..., :3].float(), prompt, negative_prompt,
                                   strength_step=int(strength_step), steps=int(steps), guidance=float(guidance),
                                   rescale=float(rescale), chunk=int(chunk), overlap=int(overlap), seed=int(seed),
                                   crop=output == OUTPUT_CHOICES[0], chunk_batch=chunk_batch, callback=on_step,
                                   rows_together=not low)
        except BaseException as exc:  # interrupt, OOM, anything: free the accelerator, then let ComfyUI report it
            mm.soft_empty_cache()
            settings = {"frames": int(images.shape[0]), "chunk": int(chunk), "dtype": str(refiner.module.dtype)}
            if memory != "low vram":
                settings["memory"] = memory
            advise_out_of_memory(exc, "RandomizedBlendRefiner", settings)
            raise
        log.info("StreamingT2V: refined %d frames -> %dx%d", out.shape[0], out.shape[2], out.shape[1])
        return io.NodeOutput(out.to(mm.intermediate_device()))


REFINER_NODES = [LoadStreamingT2VRefiner, RandomizedBlendRefiner]
