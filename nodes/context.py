"""RandomizedBlendContextWindows: StreamingT2V's randomized blending for any core ComfyUI video MODEL."""
from __future__ import annotations

from comfy_api.latest import io

from ..comfy_bridge import context_fuse as cf
from .types import SEED_MAX


class RandomizedBlendContextWindows(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RandomizedBlendContextWindows",
            display_name="Context Windows (Randomized Blending)",
            category="StreamingT2V/context",
            description=(
                "Samples a long latent in overlapping context windows (ComfyUI's own windows) and joins them by "
                "StreamingT2V's randomized blending instead of a weight ramp: at every sampler step, inside each "
                "overlap, one seeded random cut decides which window each frame's prediction comes from; no "
                "frame is averaged, and the seam moves every step, so none is left. What is blended is the "
                "model's denoised output (x0), which ComfyUI computes for every model family (eps, "
                "v-prediction, flow); since each frame takes one window's output whole, that equals blending "
                "the raw eps/v/flow output. Cond and uncond take the same cuts. Costs no extra model calls. "
                "Same seed, same video."),
            inputs=[
                io.Model.Input("model", tooltip="A video model (Wan, LTXV, HunyuanVideo, AnimateDiff/SVD-style, ...)."),
                io.Int.Input("context_length", default=81, min=1, max=16384,
                             tooltip="Window length, in length_unit. Wan: 81 video frames = 21 latent frames."),
                io.Int.Input("context_overlap", default=32, min=1, max=16384,
                             tooltip="Frames shared by neighbouring windows, in length_unit; the cuts fall inside."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seeds the cuts: one per overlap per step, from (seed, step, overlap)."),
                io.Combo.Input("frame_dim", options=list(cf.FRAME_DIMS), default="auto",
                               tooltip="The latent dimension that holds the frames; auto tells it from the model."),
                io.Combo.Input("length_unit", options=cf.LENGTH_UNITS, default=cf.LENGTH_UNITS[0],
                               tooltip=("video frames: converted with the model's temporal compression (Wan 4, "
                                        "LTXV 8; 1 where frames are the batch). latent frames: used as given.")),
                io.Combo.Input("context_schedule", options=cf.SCHEDULES, default=cf.SCHEDULES[0],
                               tooltip=("standard_static: the same windows every step. standard_uniform: windows "
                                        "that shift with the step (core's uniform schedule, stride 1).")),
            ],
            outputs=[io.Model.Output(tooltip="The model, sampling in randomized-blend context windows.")],
        )

    @classmethod
    def validate_inputs(cls, context_length=81, context_overlap=32):
        return "; ".join(cf.window_problems(context_length, context_overlap)) or True

    @classmethod
    def execute(cls, model, context_length, context_overlap, seed, frame_dim, length_unit,
                context_schedule) -> io.NodeOutput:
        return io.NodeOutput(cf.randomized_blend_windows(model, context_length, context_overlap, seed, frame_dim,
                                                         length_unit, context_schedule))


CONTEXT_NODES = [RandomizedBlendContextWindows]
