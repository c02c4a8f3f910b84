"""Stage 1 nodes: the first chunk of a stream, from text (ModelScope T2V) or from any frames."""
from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..comfy_bridge.run import heavy_run
from ..streamingt2v_core.common.dtypes import dtype_name
from ..streamingt2v_core.common.frames import FIT_MODES, fit_frames
from .types import (OFFICIAL_CONFIG, SEED_MAX, ModelScopeUNet, Stream, StreamingT2VModel, StreamState,
                    frames_to_image, image_to_frames)

log = logging.getLogger("StreamingT2V")

MIN_FRAMES = OFFICIAL_CONFIG.min_stream_frames  # the CAM reads the last 8; a loaded model's config decides
MAX_SIZE = 4096
RESIZE_MODES = list(FIT_MODES)  # "center crop", "stretch"


def size_inputs() -> list:
    tip = "0: the StreamingT2V model's resolution (256 for the official model)."
    return [io.Int.Input(name, default=0, min=0, max=MAX_SIZE, step=8, tooltip=tip) for name in ("width", "height")]


def size_problem(width, height, multiple: int = 8) -> str | None:
    """Why a width/height pair cannot be used (None: fine). Linked values arrive as None in validation."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and value != 0 and not (64 <= value <= MAX_SIZE and value % multiple == 0):
            lower = min(MAX_SIZE, max(64, value // multiple * multiple))
            return (f"{name}: {value} is not divisible by {multiple} (or outside 64 to {MAX_SIZE}); use 0 for the "
                    f"model's resolution or a multiple of {multiple}, e.g. {lower}")
    return None


def _target_size(model, width: int, height: int) -> tuple:
    cfg = model.module.config
    return (width or cfg.width), (height or cfg.height)


class StreamingT2VInitFromText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamingT2VInitFromText",
            display_name="Init From Text (ModelScope T2V)",
            category="StreamingT2V/init",
            description="The first 16-frame chunk from text with the ModelScope text-to-video UNet and the "
                        "StreamingT2V model's text encoder and VAE. Official: DPM-Solver++ 50 steps, guidance 9, "
                        "256x256, no negative prompt.",
            inputs=[
                StreamingT2VModel.Input("model"),
                ModelScopeUNet.Input("t2v_unet"),
                io.String.Input("prompt", multiline=True, default=""),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="Not used by the official code (empty)."),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Float.Input("guidance", default=9.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Int.Input("seed", default=33, min=0, max=SEED_MAX, control_after_generate=True),
                *size_inputs(),
            ],
            outputs=[Stream.Output("init_stream", display_name="stream"),
                     io.Image.Output("frames", display_name="frames")],
        )

    @classmethod
    def validate_inputs(cls, width=0, height=0):
        return size_problem(width, height) or True

    @classmethod
    def execute(cls, model, t2v_unet, prompt, negative_prompt, steps, guidance, seed, width=0, height=0) -> io.NodeOutput:
        from ..streamingt2v_core.t2v.init_modelscope import DEFAULTS, generate_first_chunk

        if size_problem(width, height):
            raise ValueError(size_problem(width, height))
        width, height = _target_size(model, width, height)
        settings = {"dtype": dtype_name(t2v_unet.module.dtype), "size": f"{width}x{height}"}
        with heavy_run("StreamingT2VInitFromText", settings, steps) as run:
            st = model.on_device(t2v_unet)
            frames = generate_first_chunk(t2v_unet.module, st, prompt, negative_prompt, steps=steps,
                                          guidance=guidance, seed=seed, num_frames=DEFAULTS["frames"],
                                          height=height, width=width, on_step=lambda done, _total: run.step(done))
        image = frames_to_image(frames)
        run.show(image[-1])
        return io.NodeOutput(StreamState(chunks=(image,), prompts=(prompt,)), image)


class StreamingT2VInitFromFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamingT2VInitFromFrames",
            display_name="Init From Frames (StreamingT2V)",
            category="StreamingT2V/init",
            description=f"Starts a stream from any frames (at least {MIN_FRAMES}: the CAM reads the last "
                        f"{MIN_FRAMES}), e.g. a loaded video, to continue it. Frames are resized to the model's "
                        "resolution.",
            inputs=[
                # lazy: the frame count is checked before the model is requested (loaded)
                StreamingT2VModel.Input("model", lazy=True),
                io.Image.Input("frames", tooltip=f"At least {MIN_FRAMES} frames; all of them become chunk 0 of the stream."),
                *size_inputs(),
                io.Combo.Input("resize", options=RESIZE_MODES, default="center crop",
                               tooltip="center crop keeps the aspect ratio; stretch fills the frame."),
            ],
            outputs=[Stream.Output("init_stream", display_name="stream"),
                     io.Image.Output("resized_frames", display_name="frames"),
                     io.String.Output("info", display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, width=0, height=0):
        return size_problem(width, height) or True

    @staticmethod
    def input_problem(frames, width, height, resize, min_frames: int = MIN_FRAMES) -> str | None:
        """Why the inputs other than the model cannot be used (None: fine). `min_frames`: what the model's
        CAM reads (the official number until the model is there)."""
        n = int(frames.shape[0])
        if n < min_frames:
            return (f"frames: {n} frame(s) given; the CAM continues from the last {min_frames} frames, "
                    f"so give at least {min_frames} (e.g. a longer video or more images)")
        if size_problem(width, height):
            return size_problem(width, height)
        if resize not in RESIZE_MODES:
            return f"resize: '{resize}' is not one of {RESIZE_MODES}"
        return None

    @classmethod
    def check_lazy_status(cls, model=None, frames=None, width=0, height=0, resize="center crop"):
        # Bad frames fail in execute without the model: the loader is never run for them.
        if model is None and frames is not None and cls.input_problem(frames, width, height, resize) is None:
            return ["model"]
        return []

    @classmethod
    def execute(cls, model, frames, width=0, height=0, resize="center crop") -> io.NodeOutput:
        # model is None when check_lazy_status found a problem with the official number: it is not loaded
        min_frames = MIN_FRAMES if model is None else model.module.config.min_stream_frames
        problem = cls.input_problem(frames, width, height, resize, min_frames)
        if problem:
            raise ValueError(problem)
        n = int(frames.shape[0])
        width, height = _target_size(model, width, height)
        h, w = int(frames.shape[1]), int(frames.shape[2])
        if (w, h) == (width, height):
            image = frames[..., :3].float().cpu().contiguous()
            info = f"{n} frames at {w}x{h}, used as they are"
        else:
            image = frames_to_image(fit_frames(image_to_frames(frames), width, height, resize))
            info = f"{n} frames resized from {w}x{h} to {width}x{height} ({resize}) to match the model"
            log.warning("StreamingT2V: %s", info)
        return io.NodeOutput(StreamState(chunks=(image,), prompts=("",)), image, info, ui=ui.PreviewText(info))


INIT_NODES = [StreamingT2VInitFromText, StreamingT2VInitFromFrames]
