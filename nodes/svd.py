"""StreamingSVD nodes (the image-to-video family on ComfyUI's own SVD model).

StreamingSVDSigmas: the official schedule as SIGMAS, for core's SamplerCustom / SamplerCustomAdvanced with
an SVD model. Core's AlignYourStepsScheduler (model_type SVD) interpolates the same anchors to steps + 1
points and sets the last to 0, which is another schedule (4 steps: 700, 11.26, 1.789, 0.264, 0 instead of
700, 6.466, 0.542, 0.002, 0)."""
from __future__ import annotations

from comfy_api.latest import io

from ..streamingt2v_core.svd.config import STEPS
from ..streamingt2v_core.svd.sigmas import official_sigmas


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


SVD_NODES = [StreamingSVDSigmas]
