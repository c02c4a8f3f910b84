"""VideoQualityMetrics: the paper's MAWE, SCuts and CLIP score of an IMAGE batch (frames = batch), plus the
seam score at chunk borders and the CIELAB colour drift (streamingt2v_core/metrics/seams.py, drift.py).

CLIP score inputs: ComfyUI's own CLIP_VISION and CLIP types serve, so the node takes those instead of
an OpenCLIP file. The paper's model is OpenCLIP ViT-H-14 (laion2B); its image tower is what ComfyUI's
"Load CLIP Vision" reads from `clip_vision_h.safetensors` (`image_embeds` = projected embedding), and
its text tower is the SD2.x / ModelScope text encoder that "Load CLIP" reads (type stable_diffusion),
whose pooled output ComfyUI returns projected (return_projected_pooled). Both halves therefore give
embeddings in the one ViT-H-14 space, from files users already have, with ComfyUI's device management
and no download. They must come from the same CLIP model: the node checks the embedding sizes only.
The command line (`python -m streamingt2v_core.metrics`) uses an OpenCLIP weights file instead.
"""
from __future__ import annotations

import json
import math

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io, ui

# Farnebäck stays a core/CLI option only: on smooth, low-gradient frames it returns zero flow.
FLOW_CHOICES = ["auto", "dis"]


class ComfyCLIPScorer:
    """Image and text encoders for the CLIP score from ComfyUI CLIP_VISION and CLIP objects."""

    name = "comfy:CLIP_VISION+CLIP"

    def __init__(self, clip_vision, clip):
        self.clip_vision = clip_vision
        self.clip = clip

    def encode_images(self, frames):
        # encode_image does CLIP's resize / center crop / normalise itself
        return self.clip_vision.encode_image(frames)["image_embeds"]

    def encode_text(self, prompt: str):
        _, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
        return pooled[0]


class VideoQualityMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoQualityMetrics",
            display_name="Video Quality Metrics (MAWE, SCuts, CLIP)",
            category="StreamingT2V/metrics",
            description=("The StreamingT2V paper's metrics: MAWE (motion-aware warp error, lower is better; "
                         "infinite for a static video), SCuts (detected scene cuts, lower is better) and the "
                         "CLIP text-image score (higher is better), for the whole video and growing windows; the "
                         "seam score (frame change at chunk borders / inside chunks, 1.0 = no seam) and the colour "
                         "drift (CIELAB ΔE of each window's mean colour against the first window)."),
            inputs=[
                io.Image.Input("images", tooltip="The video: frames in the batch dimension."),
                io.Combo.Input("flow", options=FLOW_CHOICES, default="auto",
                               tooltip=("Optical flow for MAWE. auto: RAFT-large (the official flow) when the environment "
                                        "variable STREAMINGT2V_RAFT_WEIGHTS names its weights file, else OpenCV DIS. "
                                        "MAWE values are comparable only with the same flow.")),
                io.Float.Input("coeff", default=9.5, min=0.001, max=1000.0, step=0.1,
                               tooltip="MAWE = mean over frame pairs of warp_error / (coeff * motion); official 9.5."),
                io.Int.Input("working_size", default=720, min=16, max=2048, step=8,
                             tooltip="Frames are resized to this square size for the flow (official 720)."),
                io.Int.Input("window_start", default=120, min=3, max=100000,
                             tooltip="Also report the metrics on frames 0..start, 0..start+step, ..."),
                io.Int.Input("window_step", default=20, min=1, max=100000),
                io.String.Input("prompt", multiline=True, default="", optional=True,
                                tooltip="Text for the CLIP score (needs clip and clip_vision too)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Text encoder of the CLIP model, e.g. the SD2.x / ModelScope OpenCLIP ViT-H-14."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Image encoder of the same CLIP model, e.g. clip_vision_h.safetensors."),
                io.Int.Input("seam_chunk_length", default=0, min=0, max=100000, optional=True,
                             tooltip=("Seam borders from chunks of this many frames: at N, N+(N-overlap), ... "
                                      "(StreamingT2V: 16 with overlap 8). 0: use seam_borders, or detect the "
                                      "borders as the periodic peaks of the frame-to-frame change.")),
                io.Int.Input("seam_overlap", default=0, min=0, max=100000, optional=True,
                             tooltip="Frames consecutive chunks share (with seam_chunk_length)."),
                io.String.Input("seam_borders", default="", optional=True,
                                tooltip=("Explicit seam borders, comma-separated frame indices (e.g. 16,32,48); "
                                         "border b = the change from frame b-1 to frame b. Empty: see "
                                         "seam_chunk_length.")),
                io.Int.Input("drift_window", default=16, min=1, max=100000, optional=True,
                             tooltip="Colour drift: frames per window (CIELAB mean and std per window)."),
                io.Int.Input("drift_step", default=16, min=1, max=100000, optional=True,
                             tooltip="Colour drift: frames from one window's start to the next."),
            ],
            outputs=[
                io.String.Output(display_name="report"),
                io.String.Output(display_name="json"),
                io.Float.Output(display_name="mawe", tooltip="inf when the video is static (stagnation)."),
                io.Float.Output(display_name="motion", tooltip="Mean flow magnitude in pixels at the working size."),
                io.Float.Output(display_name="warp_error"),
                io.Int.Output(display_name="scuts"),
                io.Float.Output(display_name="clip_score", tooltip="NaN when there is no prompt or CLIP model."),
                io.Float.Output(display_name="seam_score",
                                tooltip=("Mean frame change at chunk borders / inside chunks (1.0 = no seam); NaN "
                                         "when the borders are detected and the video is too short (< 9 frames).")),
                io.Float.Output(display_name="max_delta_e",
                                tooltip="Largest CIE76 ΔE of a window's mean CIELAB colour against the first window."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, flow, coeff, working_size, window_start, window_step, prompt="", clip=None,
                clip_vision=None, seam_chunk_length=0, seam_overlap=0, seam_borders="", drift_window=16,
                drift_step=16) -> io.NodeOutput:
        from ..streamingt2v_core.metrics import compute_metrics

        seam_kwargs = _seam_inputs(int(images.shape[0]), int(seam_chunk_length), int(seam_overlap), seam_borders)

        has_prompt = bool(prompt and prompt.strip())
        if has_prompt and (clip is None) != (clip_vision is None):
            missing = "clip" if clip is None else "clip_vision"
            raise ValueError(f"CLIP score: connect `{missing}` too (the text and image halves of one CLIP "
                             "model), or leave both unconnected to skip the CLIP score")
        scorer = ComfyCLIPScorer(clip_vision, clip) if has_prompt and clip is not None else None

        bar = comfy.utils.ProgressBar(max(int(images.shape[0]) - 1, 1))

        def progress(done: int, total: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        result = compute_metrics(images, prompt=prompt if has_prompt else None, clip=scorer, flow_method=flow,
                                 size=int(working_size), coeff=float(coeff), window_start=int(window_start),
                                 window_step=int(window_step), progress=progress, drift_window=int(drift_window),
                                 drift_step=int(drift_step), **seam_kwargs)
        report = result.report()
        clip_score = math.nan if result.clip_score is None else float(result.clip_score)
        return io.NodeOutput(report, json.dumps(result.to_dict(), allow_nan=False), float(result.mawe),
                             float(result.motion), float(result.warp_error), int(result.scuts), clip_score,
                             math.nan if result.seam is None else float(result.seam.score),
                             float(result.color_drift.max_delta_e), ui=ui.PreviewText(report))


def _seam_inputs(frames: int, chunk: int, overlap: int, borders_text) -> dict:
    """The seam inputs as compute_metrics keywords, checked here (cheap, before any flow work) so that
    every error names the node input and the fix."""
    from ..streamingt2v_core.metrics.seams import resolve_borders

    text = (borders_text or "").strip()
    if chunk < 0 or overlap < 0:
        raise ValueError("`seam_chunk_length` and `seam_overlap` must be >= 0 (seam_chunk_length 0 = no chunks)")
    if chunk and text:
        raise ValueError("give either `seam_chunk_length` or `seam_borders`, not both: set seam_chunk_length to 0 "
                         "to use the border list, or clear seam_borders")
    if overlap and not chunk:
        raise ValueError(f"`seam_overlap` {overlap} needs `seam_chunk_length` too: set the chunk length (e.g. 16), or "
                         "seam_overlap to 0 to use seam_borders or detect the borders")
    if chunk:
        if chunk < 2:
            raise ValueError("`seam_chunk_length` must be 0 (detect) or >= 2 frames")
        if overlap >= chunk:
            raise ValueError(f"`seam_overlap` {overlap} must be smaller than `seam_chunk_length` {chunk}: lower it")
        if chunk >= frames:
            raise ValueError(f"`seam_chunk_length` {chunk} leaves no chunk border in {frames} frames: use a smaller "
                             "chunk length, or 0 to detect the borders")
        return {"seam_chunk": chunk, "seam_overlap": overlap}
    if not text:
        return {}
    try:
        borders = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"`seam_borders` {text!r} is not a comma-separated list of frame indices, "
                         "e.g. 16,32,48") from None
    try:
        resolve_borders(frames, borders=borders)
    except ValueError as e:  # the core names no node input: say which one
        raise ValueError(f"`seam_borders`: {e}") from e
    return {"seam_borders": borders}


METRICS_NODES = [VideoQualityMetrics]
