"""StreamingSVD nodes (the image-to-video family on ComfyUI's own SVD model).

LoadStreamingSVDCAM: the pack's weights (CAM, mergers, conditioner encoder) from model.safetensors or a CAM file;
core's ImageOnlyCheckpointLoader loads the SVD-XT model from the same model.safetensors.
StreamingSVDExtend: the autoregressive loop (comfy_bridge.svd_stream), a STREAMINGT2V_STREAM out, so
ChunkAssembler joins it as it joins StreamingT2V streams (chunk 0 whole, then 18 new frames per chunk).
StreamingSVDSigmas: the official schedule as SIGMAS, for core's SamplerCustom / SamplerCustomAdvanced with
an SVD model. Core's AlignYourStepsScheduler (model_type SVD) interpolates the same anchors to steps + 1
points and sets the last to 0, which is another schedule (4 steps: 700, 11.26, 1.789, 0.264, 0 instead of
700, 6.466, 0.542, 0.002, 0)."""
from __future__ import annotations

import logging
import math

from comfy_api.latest import io, ui

from ..comfy_bridge import models
from ..comfy_bridge.run import heavy_run
from ..streamingt2v_core.common.dtypes import dtype_name
from ..streamingt2v_core.svd import config
from ..streamingt2v_core.svd.config import STEPS
from ..streamingt2v_core.svd.sigmas import official_sigmas
from .types import SEED_MAX, Stream, StreamingSVDCAM, StreamState, SVDCamWeights, frames_to_image, image_to_frames

log = logging.getLogger("StreamingT2V")
MAX_FRAMES_TO_ADD = 100_000


class StreamingSVDSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamingSVDSigmas",
            display_name="StreamingSVD Sigmas (official AYS)",
            category="StreamingT2V/svd",
            description=("The official StreamingSVD noise schedule: SVD's 11 Align-Your-Steps sigmas interpolated "
                         "log-linearly to `steps` sigmas from 700 to 0.002, then 0 (Euler, official: 30 steps). "
                         "Core's AlignYourStepsScheduler makes a different schedule from the same anchors."),
            inputs=[io.Int.Input("steps", default=STEPS, min=1, max=1000, tooltip="Sampler steps (official 30).")],
            outputs=[io.Sigmas.Output("sigmas", display_name="SIGMAS")],
        )

    @classmethod
    def execute(cls, steps: int) -> io.NodeOutput:
        # the official sampler steps in float32 (one sigma per row from a float32 ones-vector)
        return io.NodeOutput(official_sigmas(steps).float())


class LoadStreamingSVDCAM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadStreamingSVDCAM",
            display_name="Load StreamingSVD CAM",
            category="StreamingT2V/loaders",
            description=("Reads StreamingSVD's own weights - the CAM (short-term memory on the last 7 frames), its 13 "
                         "skip mergers and the conditioner's image encoder - memory-mapped from the official "
                         "model.safetensors in models/checkpoints (the same file core's Image Only Checkpoint "
                         "Loader reads the SVD-XT model from) or from a CAM-only file in models/streamingsvd "
                         "(`python -m streamingt2v_core.svd.convert`). The CAM takes the SVD MODEL's dtype."),
            inputs=[io.Combo.Input("cam_name", options=models.streamingsvd_choices(),
                                   tooltip="model.safetensors (models/checkpoints) or a CAM file (models/streamingsvd).")],
            outputs=[StreamingSVDCAM.Output("cam", display_name="cam")],
        )

    @classmethod
    def validate_inputs(cls, cam_name):
        return models.streamingsvd_problem("cam_name", cam_name) or True

    @classmethod
    def execute(cls, cam_name) -> io.NodeOutput:
        from ..streamingt2v_core.svd.weights import read_cam_and_mergers

        path = models.find_streamingsvd("cam_name", cam_name)
        parts = read_cam_and_mergers(path)  # header checks first: a wrong file fails before any tensor is read
        log.info("StreamingSVD: CAM, mergers and conditioner encoder from %s (%.2f G values)", cam_name,
                 parts.numel() / 1e9)
        return io.NodeOutput(SVDCamWeights(parts, cam_name))


class StreamingSVDExtend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamingSVDExtend",
            display_name="StreamingSVD Extend",
            category="StreamingT2V/svd",
            description=(f"Extends a video with StreamingSVD on ComfyUI's own SVD-XT model: each {config.FRAMES}-frame "
                         f"chunk is sampled with the CAM reading the last {config.COND_FRAMES} frames so far, "
                         f"conditioned on one SVD image (default: frame {config.SVD_IMAGE_INDEX} of `frames`, as "
                         f"officially); {config.NEW_FRAMES} frames are new per chunk. Official conditioning "
                         f"(fps 7, motion 127, augmentation {config.COND_AUG}), Euler over the official "
                         f"{config.STEPS}-step schedule, guidance {config.GUIDANCE_MIN} -> {config.GUIDANCE_MAX} "
                         "per frame."),
            inputs=[
                # lazy: requested only once the frames pass the cheap checks (no model loads for bad input)
                io.Model.Input("model", lazy=True, tooltip="SVD-XT from Image Only Checkpoint Loader "
                                                           "(StreamingSVD's model.safetensors)."),
                StreamingSVDCAM.Input("cam", lazy=True),
                io.ClipVision.Input("clip_vision", lazy=True),
                io.Vae.Input("vae", lazy=True),
                io.Image.Input("frames", tooltip=f"The video so far (at least {config.COND_FRAMES} frames; sides "
                                                 "multiples of 64, officially 1024x576): a first SVD chunk or any video."),
                io.Int.Input("frames_to_add", default=5 * config.NEW_FRAMES, min=1, max=MAX_FRAMES_TO_ADD,
                             tooltip=f"Rounded up to whole chunks of {config.NEW_FRAMES} new frames."),
                io.Int.Input("seed", default=33, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="One generator for the whole run: per chunk the augmentation noise, then the "
                                     "initial noise."),
                io.Image.Input("image", optional=True,
                               tooltip=f"The SVD image every chunk is conditioned on (the anchor). Default: frame "
                                       f"{config.SVD_IMAGE_INDEX} of `frames`. Same size as the frames. Several "
                                       "images: one per chunk, in order (the last carries on)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip=f"Default: the official {config.STEPS}-step "
                                                                 "schedule (StreamingSVD Sigmas)."),
                io.Sampler.Input("sampler", optional=True, tooltip="Default: Euler (official)."),
            ],
            outputs=[Stream.Output("stream", display_name="stream"),
                     io.Image.Output("images", display_name="images"),
                     io.String.Output("info", display_name="info")],
        )

    @staticmethod
    def input_problem(frames, frames_to_add, image=None) -> str | None:
        """Why the video inputs cannot be used (None: fine); linked inputs are None at validation."""
        from ..comfy_bridge.svd_stream import size_problem

        if frames_to_add is not None and not 1 <= frames_to_add <= MAX_FRAMES_TO_ADD:
            return (f"frames_to_add: {frames_to_add} frames cannot be added; give 1 to {MAX_FRAMES_TO_ADD} "
                    f"(rounded up to whole chunks of {config.NEW_FRAMES})")
        if frames is None:
            return None
        n, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
        if n < config.COND_FRAMES:
            return (f"frames: {n} frame(s) given, at least {config.COND_FRAMES} are needed (the CAM reads the last "
                    f"{config.COND_FRAMES}); give a first SVD chunk ({config.FRAMES} frames) or a longer video")
        problem = size_problem(height, width)
        if problem:
            return f"frames: {problem}"
        if image is not None and tuple(image.shape[1:3]) != (height, width):
            return (f"image: {image.shape[2]}x{image.shape[1]} pixels, the frames are {width}x{height}; resize the "
                    f"image to the frames' size (e.g. Upscale Image)")
        return None

    @classmethod
    def validate_inputs(cls, frames_to_add=None):
        return cls.input_problem(None, frames_to_add) or True

    @classmethod
    def check_lazy_status(cls, model=None, cam=None, clip_vision=None, vae=None, frames=None, frames_to_add=None,
                          image=None, **_inputs):
        if frames is None or cls.input_problem(frames, frames_to_add, image):
            return []  # execute reports the problem; no loader runs for it
        return [name for name, value in (("model", model), ("cam", cam), ("clip_vision", clip_vision),
                                         ("vae", vae)) if value is None]

    @staticmethod
    def model_problem(model) -> str | None:
        import comfy.model_base

        base = getattr(model, "model", None)
        if not isinstance(base, comfy.model_base.SVD_img2vid):
            kind = type(base).__name__ if base is not None else type(model).__name__
            return (f"model: this MODEL is {kind}, StreamingSVD extends with SVD-XT (SVD_img2vid); load StreamingSVD's "
                    "model.safetensors with Image Only Checkpoint Loader and connect its MODEL, CLIP_VISION and VAE")
        return None

    @classmethod
    def execute(cls, model, cam: SVDCamWeights, clip_vision, vae, frames, frames_to_add, seed, image=None,
                sigmas=None, sampler=None) -> io.NodeOutput:
        from ..comfy_bridge.svd_patch import build_modules
        from ..comfy_bridge.svd_stream import stream

        problem = cls.input_problem(frames, frames_to_add, image) or cls.model_problem(model)
        if problem:
            raise ValueError(problem)
        if sigmas is not None and (sigmas.ndim != 1 or sigmas.numel() < 2):
            raise ValueError(f"sigmas: {tuple(sigmas.shape)} is no schedule (at least 2 sigmas, the last 0); "
                             "connect StreamingSVD Sigmas or a scheduler node")
        try:
            modules = build_modules(model, cam.parts)  # cheap (meta build + views), before any sampling
        except ValueError as exc:
            raise ValueError(f"cam: {cam.name} does not fit this SVD model ({exc}); load the CAM from the same "
                             "model.safetensors as the MODEL") from exc
        chunks = math.ceil(frames_to_add / config.NEW_FRAMES)
        added = chunks * config.NEW_FRAMES
        n, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
        steps = (config.STEPS if sigmas is None else sigmas.numel() - 1)
        notes = [f"frames_to_add {frames_to_add} -> {chunks} chunk(s) x {config.NEW_FRAMES} new frames = {added} "
                 "frames" + (" (rounded up to whole chunks)" if added != frames_to_add else ""),
                 "SVD image: " + (f"the image input ({int(image.shape[0])} images: one per chunk, the last carries "
                                  "on)" if image is not None and image.shape[0] > 1 else "the image input"
                                  if image is not None else
                                  f"frame {min(config.SVD_IMAGE_INDEX, n - 1)} of the {n} input frames"),
                 f"sampler: {'given' if sampler is not None else 'euler'}, {steps} steps "
                 f"({'given sigmas' if sigmas is not None else 'official schedule'})"]
        pixels = image_to_frames(frames) * 2 - 1
        svd_image = None if image is None else image_to_frames(image) * 2 - 1
        settings = {"dtype": dtype_name(model.model.get_dtype()), "size": f"{width}x{height}",
                    "frames_to_add": frames_to_add}
        new_chunks = []
        with heavy_run("StreamingSVDExtend", settings, chunks * steps, steps_per_chunk=steps) as run:
            def on_step(chunk, step, _total, _x0):
                run.step(chunk * steps + step + 1)

            def on_chunk(index, new):
                images = frames_to_image((new + 1) / 2).clamp(0, 1)
                new_chunks.append(images)
                run.show(images[-1])
                log.info("StreamingSVD: chunk %d/%d done (%d frames so far)", index + 1, chunks,
                         n + config.NEW_FRAMES * (index + 1))

            stream(model, modules.cam, modules.mergers, modules.concat_encoder, vae, pixels, chunks, seed,
                   sigmas=sigmas, sampler=sampler, clip_vision=clip_vision, image=svd_image,
                   on_step=on_step, on_chunk=on_chunk)
        notes.append(f"video: {n} -> {n + added} frames")
        info = "\n".join(notes)
        log.info("StreamingSVD: %s", info.replace("\n", "; "))
        state = StreamState(chunks=(frames[..., :3].float().cpu().contiguous(), *new_chunks),
                            prompts=("",) * (1 + chunks))
        return io.NodeOutput(state, state.frames(), info, ui=ui.PreviewText(info))


SVD_NODES = [LoadStreamingSVDCAM, StreamingSVDExtend, StreamingSVDSigmas]
