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
        if enhancer.family == I2VGEN_FAMILY:
            raise ValueError(f"refiner: {refiner.name} is an I2VGen-XL folder, which this node cannot run (its "
                             "strength, prompts and blending mean other things): connect it to I2VGenXLEnhancer")
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


I2VGEN_FAMILY = "i2vgen-xl"
# the low-vram plan offloads the CLIP encoders between their uses; the VAE stays (one frame per call)
I2VGEN_OFFLOAD = ("text_encoder", "image_encoder")


class I2VGenXLEnhancer(io.ComfyNode):
    """StreamingSVD's enhancement: a sibling of RandomizedBlendRefiner sharing its core (chunk layout, cuts,
    VAE slices, memory plan), because its settings mean other things (strength as a share of the steps, fixed
    prompts, no rescale, keyframe images, blending on x_{t-1})."""

    @classmethod
    def define_schema(cls):
        from ..streamingt2v_core.enhancers.i2vgen import model as official

        return io.Schema(
            node_id="I2VGenXLEnhancer",
            display_name="I2VGen-XL Enhancer (randomized blending)",
            category="StreamingT2V/refine",
            description="StreamingSVD's enhancement with I2VGen-XL (LoadStreamingT2VRefiner on an ali-vilab/i2vgen-xl "
                        "folder): the video is stretched to 1280x720, encoded and noised to strength of the steps, "
                        "then denoised in overlapping chunks, each conditioned on its own keyframe (its first frame, "
                        "enhanced first); after every step a random cut in each overlap picks which chunk's latent "
                        "each frame keeps. No frame is dropped; the seed reproduces the result.",
            inputs=[
                RefinerModel.Input("refiner", tooltip="An I2VGen-XL folder loaded by LoadStreamingT2VRefiner."),
                io.Image.Input("images", tooltip="The video: frames in the batch dimension."),
                io.String.Input("prompt", multiline=True, default=official.OFFICIAL_PROMPT,
                                tooltip="Official: 'High Quality, HQ, detailed.' (the same for every video)."),
                io.String.Input("negative_prompt", multiline=True, default=official.OFFICIAL_NEGATIVE_PROMPT,
                                tooltip="Official: this fixed list."),
                io.Float.Input("strength", default=official.OFFICIAL_STRENGTH, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of the steps SDEdit runs (official 0.97 of 30: from step index 1)."),
                io.Int.Input("steps", default=official.OFFICIAL_STEPS, min=1, max=1000,
                             tooltip="Scheduler steps before strength (official 30)."),
                io.Float.Input("guidance", default=official.OFFICIAL_GUIDANCE, min=0.0, max=50.0, step=0.1,
                               tooltip="Classifier-free guidance (official 9.0; 1 or less: none)."),
                io.Int.Input("fps", default=official.OFFICIAL_FPS, min=1, max=240,
                             tooltip="The frame-rate micro-condition (official 38, the pipeline's default)."),
                io.Int.Input("chunk", default=official.OFFICIAL_CHUNK, min=2, max=MAX_CHUNK,
                             tooltip="Frames per chunk (official 38)."),
                io.Int.Input("overlap", default=official.OFFICIAL_OVERLAP, min=1, max=1023,
                             tooltip="Frames shared by neighbouring chunks, where the random cut falls (official 12)."),
                io.Boolean.Input("randomized_blending", default=True,
                                 tooltip="On: chunks with keyframes and random cuts (official "
                                         "--use_randomized_blending). Off: one chunk of every frame, conditioned on "
                                         "the anchor (the official default; needs memory for the whole video)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seeds the VAE posteriors, the SDEdit noise and the cuts."),
                io.Int.Input("width", default=official.OFFICIAL_CANVAS[1], min=16, max=4096, step=8,
                             tooltip="Output width; frames are stretched to width x height (official 1280)."),
                io.Int.Input("height", default=official.OFFICIAL_CANVAS[0], min=16, max=4096, step=8,
                             tooltip="Output height (official 720)."),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip="auto: low vram when the fast plan does not fit. low vram: one guidance "
                                       "row per call, feed-forwards in token chunks, the CLIP encoders visit the "
                                       "device only when used (about 8 GB at 1280x720 instead of 26 GB)."),
                io.Image.Input("anchor", optional=True,
                               tooltip="The image the keyframes are conditioned on (official: StreamingSVD's "
                                       "input image); default: the first frame."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @staticmethod
    def input_problem(strength, steps, chunk, overlap, memory, width=1280, height=720) -> str | None:
        from ..streamingt2v_core.enhancers.i2vgen.enhance import sdedit_begin

        errors = chunking_problems(int(chunk), int(overlap))
        for name, v in (("width", width), ("height", height)):
            if int(v) < 16 or int(v) % 8:
                errors.append(f"{name}: {v}; must be a multiple of 8 (the autoencoder's factor), at least 16 "
                              "(official 1280x720)")
        if not 1 <= int(steps) <= 1000:
            errors.append(f"steps: {steps}; allowed 1..1000 (official 30)")
        elif not 0 < float(strength) <= 1 or sdedit_begin(int(steps), float(strength)) >= int(steps):
            errors.append(f"strength: {strength} of {steps} steps runs no step; allowed up to 1 with "
                          "strength x steps >= 1 (official 0.97 of 30)")
        if memory_mode_problem(memory):
            errors.append(memory_mode_problem(memory))
        return "; ".join(errors) if errors else None

    @classmethod
    def validate_inputs(cls, strength=0.97, steps=30, chunk=38, overlap=12, width=1280, height=720, memory="auto"):
        return cls.input_problem(strength, steps, chunk, overlap, memory, width, height) or True

    @classmethod
    def execute(cls, refiner, images, prompt, negative_prompt, strength, steps, guidance, fps, chunk, overlap,
                randomized_blending, seed, width, height, memory="auto", anchor=None) -> io.NodeOutput:
        from ..comfy_bridge.memory import REFINE_MARGIN
        from ..streamingt2v_core.blending.sdedit import preview
        from ..streamingt2v_core.enhancers.i2vgen.enhance import enhance_video, sdedit_begin
        from ..streamingt2v_core.enhancers.i2vgen.model import chunk_activation_bytes

        problem = cls.input_problem(strength, steps, chunk, overlap, memory, width, height)
        if problem:
            raise ValueError(problem)
        enhancer = refiner.module
        if enhancer.family != I2VGEN_FAMILY:
            raise ValueError(f"refiner: {refiner.name} is a {enhancer.family} refiner; this node runs I2VGen-XL "
                             "(an ali-vilab/i2vgen-xl folder in models/streamingt2v_refiner): connect it to "
                             "RandomizedBlendRefiner instead")
        frames = int(images.shape[0])
        clen = frames if not randomized_blending else min(int(chunk), frames)
        settings = {"frames": frames, "chunk": clen, "dtype": dtype_name(enhancer.dtype)}
        if memory != "low vram":
            settings["memory"] = memory
        total = int(steps) - sdedit_begin(int(steps), float(strength))  # the main pass's steps
        with heavy_run("I2VGenXLEnhancer", settings, total) as run:
            # the meta-device count takes a while at 720p: only "auto" needs it to decide
            need = 0
            if memory == "auto":
                rows = 2 if guidance > 1 else 1
                canvas = (int(height), int(width))
                need = int(REFINE_MARGIN * chunk_activation_bytes(enhancer, clen, rows, canvas=canvas))
            rf = refiner.on_device(memory_required=need)
            plan, free = plan_on(rf.device, memory, need, parts=present_parts(rf, I2VGEN_OFFLOAD))
            log.info("StreamingT2V: I2VGen-XL memory plan: %s (%.2f GiB free)", plan.describe(), free / 2 ** 30)
            with applied_on(plan, rf, rf.device):
                anchor_image = None if anchor is None else anchor[:1, ..., :3].float()
                out = enhance_video(rf, images[..., :3].float(), anchor_image, prompt, negative_prompt,
                                    steps=int(steps), strength=float(strength), guidance=float(guidance),
                                    fps=int(fps), chunk=int(chunk), overlap=int(overlap),
                                    blending=bool(randomized_blending), seed=int(seed),
                                    canvas=(int(height), int(width)),
                                    callback=lambda i, _n, x: run.step(i + 1, preview(rf, x)),
                                    rows_together=plan.rows_together)
        log.info("StreamingT2V: enhanced %d frames -> %dx%d", out.shape[0], out.shape[2], out.shape[1])
        return io.NodeOutput(out.to(mm.intermediate_device()))


ENHANCE_NODES = [RandomizedBlendRefiner, I2VGenXLEnhancer]
