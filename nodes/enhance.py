"""Stage 3: refine a video with randomized blending (the whole-video latent denoised in overlapping chunks,
random cuts per step). The refiner itself is loaded by LoadStreamingT2VRefiner (load.py)."""
from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.latest import io

from ..comfy_bridge.memory import applied_on, plan_on, present_parts, refine_chunk_bytes
from ..comfy_bridge.run import heavy_run
from ..streamingt2v_core.common.dtypes import dtype_name
from ..streamingt2v_core.blending.cuts import MAX_CHUNK, chunking_problems
from ..streamingt2v_core.common.memory import MEMORY_MODES, memory_mode_problem
from .types import SEED_MAX, RefinerModel

log = logging.getLogger("StreamingT2V")

OUTPUT_CHOICES = ["crop to content", "padded canvas (official 1280x720)"]
# what the low-vram plan offloads between uses, where the refiner has it
OFFLOAD_PARTS = ("text_encoder",)


def _chunking_errors(chunk: int, overlap: int, steps: int, strength_step: int) -> list:
    errors = chunking_problems(chunk, overlap)
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
                io.Int.Input("chunk", default=24, min=2, max=MAX_CHUNK, tooltip="Frames per chunk (official 24)."),
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

    @staticmethod
    def input_problem(strength_step, steps, chunk, overlap, output, memory) -> str | None:
        """Why the settings cannot be used (None: fine): every problem at once."""
        errors = _chunking_errors(int(chunk), int(overlap), int(steps), int(strength_step))
        if output not in OUTPUT_CHOICES:
            errors.append(f"output: '{output}' is not one of {OUTPUT_CHOICES}")
        if memory_mode_problem(memory):
            errors.append(memory_mode_problem(memory))
        return "; ".join(errors) if errors else None

    @classmethod
    def validate_inputs(cls, strength_step=600, steps=30, chunk=24, overlap=8, output=OUTPUT_CHOICES[0],
                        memory="auto"):
        return cls.input_problem(strength_step, steps, chunk, overlap, output, memory) or True

    @classmethod
    def execute(cls, refiner, images, prompt, negative_prompt, strength_step, steps, guidance, rescale, chunk,
                overlap, seed, output, memory="auto") -> io.NodeOutput:
        from ..streamingt2v_core.blending.sdedit import check_frame_size, preview, refine_video

        problem = cls.input_problem(strength_step, steps, chunk, overlap, output, memory)
        if problem:
            raise ValueError(problem)
        enhancer = refiner.module
        check_frame_size(int(images.shape[1]), int(images.shape[2]), enhancer.canvas)  # before any heavy work

        settings = {"frames": int(images.shape[0]), "chunk": int(chunk), "dtype": dtype_name(enhancer.dtype)}
        if memory != "low vram":
            settings["memory"] = memory
        with heavy_run("RandomizedBlendRefiner", settings, steps) as run:
            per_chunk = refine_chunk_bytes(enhancer, min(int(chunk), int(images.shape[0])), memory, guidance)
            rf = refiner.on_device(memory_required=per_chunk)
            plan, free = plan_on(rf.device, memory, per_chunk, parts=present_parts(rf, OFFLOAD_PARTS),
                                 per_chunk_bytes=per_chunk)
            log.info("StreamingT2V: refiner memory plan: %s, %d chunk(s) per UNet call (%.2f GiB each, %.2f GiB free)",
                     "low vram" if plan.low else "fast", plan.chunk_batch, per_chunk / 2 ** 30, free / 2 ** 30)
            with applied_on(plan, rf, rf.device):
                # the preview: the middle frame's current x0 prediction, decoded by the core
                out = refine_video(rf, images[..., :3].float(), prompt, negative_prompt,
                                   strength_step=int(strength_step), steps=int(steps), guidance=float(guidance),
                                   rescale=float(rescale), chunk=int(chunk), overlap=int(overlap), seed=int(seed),
                                   crop=output == OUTPUT_CHOICES[0], chunk_batch=plan.chunk_batch,
                                   callback=lambda i, _total, x0: run.step(i + 1, preview(rf, x0)),
                                   rows_together=plan.rows_together)
        log.info("StreamingT2V: refined %d frames -> %dx%d", out.shape[0], out.shape[2], out.shape[1])
        return io.NodeOutput(out.to(mm.intermediate_device()))


ENHANCE_NODES = [RandomizedBlendRefiner]
