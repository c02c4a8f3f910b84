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

import torch
from comfy_api.latest import io, ui

from ..comfy_bridge import models
from ..comfy_bridge.run import heavy_run
from ..streamingt2v_core.common.dtypes import dtype_name
from ..streamingt2v_core.svd import config
from ..streamingt2v_core.svd.config import STEPS
from ..streamingt2v_core.svd.sigmas import official_sigmas
from .types import (SEED_MAX, Stream, StreamingSVDCAM, StreamState, SVDCamWeights, SVDSampling, frames_to_image,
                    image_to_frames)

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
                io.Image.Input("frames", optional=True,
                               tooltip=f"The video so far (at least {config.COND_FRAMES} frames; sides multiples of "
                                       "64, officially 1024x576): a first SVD chunk or any video. Or connect `stream`."),
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
                Stream.Input("stream", optional=True,
                             tooltip="Instead of `frames`: continue a StreamingSVD stream, from StreamingSVD Extend or "
                                     "Load Stream State (StreamingSVD), exactly where its last chunk left it: its "
                                     "control frames, SVD image(s) and generator (the seed is not used), so a run "
                                     "split into steps equals one long run."),
            ],
            outputs=[Stream.Output("extended_stream", display_name="stream"),
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
                          image=None, stream=None, **_inputs):
        frames = held_frames(frames, stream)
        if frames is None or cls.video_problem(frames, frames_to_add, image, stream):
            return []  # execute reports the problem; no loader runs for it
        return [name for name, value in (("model", model), ("cam", cam), ("clip_vision", clip_vision),
                                         ("vae", vae)) if value is None]

    @classmethod
    def video_problem(cls, frames, frames_to_add, image, stream) -> str | None:
        """input_problem, plus the choice between `frames` and `stream` (`frames` here: held_frames)."""
        if stream is not None:
            if not isinstance(stream.sampling, SVDSampling):
                return ("stream: not a StreamingSVD stream (it has no StreamingSVD chunk to continue); connect the "
                        "stream of StreamingSVD Extend or Load Stream State (StreamingSVD), or connect `frames` instead")
            if image is not None:
                return "image: a continued stream keeps its SVD image(s); disconnect `image` (or start from `frames`)"
        elif frames is None:
            return "frames: connect the video to extend (IMAGE), or a StreamingSVD stream to continue"
        return cls.input_problem(frames, frames_to_add, image)

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
    def execute(cls, model, cam: SVDCamWeights, clip_vision, vae, frames_to_add, seed, frames=None, image=None,
                sigmas=None, sampler=None, stream: StreamState | None = None) -> io.NodeOutput:
        from ..comfy_bridge.svd_patch import build_modules
        from ..comfy_bridge.svd_stream import stream as run_stream
        from ..streamingt2v_core.stream_state import identity_problem, make_generator

        if frames is not None and stream is not None:
            raise ValueError("frames / stream: both are connected; connect `frames` to extend a video or `stream` to "
                             "continue a StreamingSVD stream, not both")
        held = held_frames(frames, stream)
        problem = cls.video_problem(held, frames_to_add, image, stream) or cls.model_problem(model)
        if problem:
            raise ValueError(problem)
        if sigmas is not None and (sigmas.ndim != 1 or sigmas.numel() < 2):
            raise ValueError(f"sigmas: {tuple(sigmas.shape)} is no schedule (at least 2 sigmas, the last 0); "
                             "connect StreamingSVD Sigmas or a scheduler node")
        identity = svd_identity(cam, model)
        carried = None if stream is None else stream.sampling
        if carried is not None:
            problem = identity_problem(carried.model, identity) if identity is not None else None
            if problem:
                raise ValueError(f"cam / model: {problem}")
        try:
            modules = build_modules(model, cam.parts)  # cheap (meta build + views), before any sampling
        except ValueError as exc:
            raise ValueError(f"cam: {cam.name} does not fit this SVD model ({exc}); load the CAM from the same "
                             "model.safetensors as the MODEL") from exc
        chunks = math.ceil(frames_to_add / config.NEW_FRAMES)
        added = chunks * config.NEW_FRAMES
        n = held.shape[0] if stream is None else stream.num_frames
        height, width = int(held.shape[1]), int(held.shape[2])
        steps = (config.STEPS if sigmas is None else sigmas.numel() - 1)
        pixels = image_to_frames(held) * 2 - 1
        if carried is not None:
            svd_image = carried.images
            source = f"continued stream: {carried.chunks_done} StreamingSVD chunks so far, seed {carried.seed}"
            resume = {"generator": make_generator(carried.seed, carried.generator_state), "tail": carried.tail,
                      "first_chunk": carried.chunks_done,
                      "embeddings": {i: carried.embeddings[i:i + 1] for i in range(carried.embeddings.shape[0])}}
        else:
            svd_image = (pixels[min(config.SVD_IMAGE_INDEX, n - 1)][None] if image is None
                         else image_to_frames(image) * 2 - 1)
            source = (f"the image input ({int(image.shape[0])} images: one per chunk, the last carries on)"
                      if image is not None and image.shape[0] > 1 else "the image input" if image is not None
                      else f"frame {min(config.SVD_IMAGE_INDEX, n - 1)} of the {n} input frames")
            resume = {"generator": make_generator(seed)}
        notes = [f"frames_to_add {frames_to_add} -> {chunks} chunk(s) x {config.NEW_FRAMES} new frames = {added} "
                 "frames" + (" (rounded up to whole chunks)" if added != frames_to_add else ""),
                 f"SVD image: {source}",
                 f"sampler: {'given' if sampler is not None else 'euler'}, {steps} steps "
                 f"({'given sigmas' if sigmas is not None else 'official schedule'})"]
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

            result = run_stream(model, modules.cam, modules.mergers, modules.concat_encoder, vae, pixels, chunks,
                                seed, sigmas=sigmas, sampler=sampler, clip_vision=clip_vision, image=svd_image,
                                on_step=on_step, on_chunk=on_chunk, **resume)
        notes.append(f"video: {n} -> {n + added} frames")
        info = "\n".join(notes)
        log.info("StreamingSVD: %s", info.replace("\n", "; "))
        used = sorted(result.embeddings)
        sampling = SVDSampling(
            seed=seed if carried is None else carried.seed, generator_state=result.generator_state,
            tail=result.chunks[-1][-config.COND_FRAMES:].contiguous(), images=svd_image.float().cpu().contiguous(),
            embeddings=torch.cat([result.embeddings[i].float().cpu() for i in used]).contiguous(),
            chunks_done=(0 if carried is None else carried.chunks_done) + chunks, model=identity)
        if stream is None:
            out = StreamState(chunks=(frames[..., :3].float().cpu().contiguous(), *new_chunks),
                              prompts=("",) * (1 + chunks), sampling=sampling)
        else:
            out = stream.extended(new_chunks, ("",) * chunks, None, sampling)
        return io.NodeOutput(out, out.frames(), info, ui=ui.PreviewText(info))


def held_frames(frames, stream):
    """The frames the node has: `frames`, else the frames the stream holds (IMAGE), else None."""
    if frames is not None:
        return frames
    return None if stream is None else stream.frames()


def svd_identity(cam: SVDCamWeights, model):
    """The identity of StreamingSVD's weights for a saved state: the CAM file (its name, size, sampled content
    hash) and the SVD MODEL's dtype; None when the file is no longer in its model folder."""
    from ..streamingt2v_core.stream_state import model_identity

    path = models.streamingsvd_path(cam.name)
    return None if path is None else model_identity(path, cam.name, dtype_name(model.model.get_dtype()))


SVD_NODES = [LoadStreamingSVDCAM, StreamingSVDExtend, StreamingSVDSigmas]
