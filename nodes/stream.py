"""Stage 2 nodes: the APM anchor and the autoregressive CAM extension loop."""
from __future__ import annotations

import contextlib
import logging

import comfy.model_management as mm
import comfy.utils
import torch
from comfy.cli_args import args
from comfy_api.latest import io, ui
from PIL import Image

from ..streamingt2v_core.memory import (FEED_FORWARD_CHUNK, MEMORY_MODES, OFFLOAD_PARTS, low_memory,
                                        memory_mode_problem, wants_low_memory)
from .errors import oom_advice, simulate_oom_for_tests
from .loader import DTYPE_NAMES
from .types import (CHUNK_NEW_FRAMES, APMAnchor, Anchor, Stream, StreamingT2VModel, StreamState, frames_to_image,
                    image_to_frames)

log = logging.getLogger("StreamingT2V")

MAX_FRAMES_TO_ADD = 100_000
SEED_MAX = 0xFFFFFFFFFFFFFFFF
MEMORY_TOOLTIP = ("auto: everything on the device when it fits, else low vram. max speed: everything on the device. "
                  "low vram: text and image encoders, resampler and VAE visit the device only while they run, "
                  "feed-forwards run in token chunks (same frames, less memory, some speed lost).")
LOW_STAGE2 = ("low vram (text/image encoders, resampler and VAE offloaded between uses; feed-forwards in chunks of "
              f"{FEED_FORWARD_CHUNK} tokens)")
EMPTY_PROMPT_LIST = ("prompt: the prompt list is empty (per_line_prompts is on and every line is blank); "
                     "write one prompt per line or turn per_line_prompts off")


def encode_anchor(model, image: torch.Tensor, source: str) -> Anchor:
    """IMAGE [1, H, W, 3] in [0, 1] to APM tokens (the official anchor is a frame in [-1, 1])."""
    tokens = model.encode_anchor(image_to_frames(image) * 2 - 1)
    return Anchor(tokens=tokens.float().cpu(), image=image.float().cpu().contiguous(), source=source)


def split_prompts(prompt: str, per_line: bool) -> list:
    """One prompt, or the non-empty lines of `prompt` when `per_line` is on."""
    if not per_line:
        return [prompt]
    return [line.strip() for line in prompt.splitlines() if line.strip()]


def chunk_prompts(prompts: list, num_chunks: int) -> list:
    """Prompt of each chunk: line i for chunk i; the last line carries on when there are more chunks."""
    return [prompts[min(i, len(prompts) - 1)] for i in range(num_chunks)]


def preview(image: torch.Tensor):
    """A ProgressBar preview of one IMAGE frame [H, W, 3]."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return ("JPEG", Image.fromarray(pixels), args.preview_size)


class AnchorFrameAPM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnchorFrameAPM",
            display_name="Anchor Frame (APM)",
            category="StreamingT2V/conditioning",
            description="Encodes one frame (or any image, e.g. a character reference) into APM tokens: the "
                        "appearance anchor every new chunk attends to. Without it, CAMExtendChunk anchors to "
                        "frame 0 of the stream, as the official code does.",
            inputs=[
                # lazy: the index is checked before the model is requested (loaded)
                StreamingT2VModel.Input("model", lazy=True),
                io.Image.Input("frames", tooltip="Frames or a single image."),
                io.Int.Input("index", default=0, min=0, max=MAX_FRAMES_TO_ADD,
                             tooltip="Which frame of `frames` is the anchor (0 = the first)."),
            ],
            outputs=[APMAnchor.Output("anchor", display_name="anchor"),
                     io.Image.Output("anchor_image", display_name="anchor_image")],
        )

    @staticmethod
    def index_problem(frames, index) -> str | None:
        n = int(frames.shape[0])
        if not 0 <= index < n:
            return (f"index: {index} is beyond the {n} frame(s) of `frames` (valid: 0 to {n - 1}); "
                    f"pick a frame that exists")
        return None

    @classmethod
    def check_lazy_status(cls, model=None, frames=None, index=0):
        # A bad index fails in execute without the model: the loader is never run for it.
        if model is None and frames is not None and cls.index_problem(frames, index) is None:
            return ["model"]
        return []

    @classmethod
    def execute(cls, model, frames, index=0) -> io.NodeOutput:
        problem = cls.index_problem(frames, index)
        if problem:
            raise ValueError(problem)
        n = int(frames.shape[0])
        image = frames[index:index + 1, :, :, :3]
        st = model.on_device()
        anchor = encode_anchor(st, image, f"frame {index} of {n}")
        return io.NodeOutput(anchor, anchor.image)


class CAMExtendChunk(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CAMExtendChunk",
            display_name="CAM Extend (StreamingT2V)",
            category="StreamingT2V/sampling",
            description="Extends a stream chunk by chunk: each 16-frame chunk is denoised with the CAM reading "
                        "the last 8 frames so far and the APM holding the anchor; 8 frames are new per chunk. "
                        "Official defaults: DDIM 50 steps, eta 1, guidance 7.5, seed 33.",
            inputs=[
                # lazy: requested only once the stream exists and the cheap checks pass (no load for bad input)
                StreamingT2VModel.Input("model", lazy=True),
                Stream.Input("stream", tooltip="From an init node or another CAMExtendChunk."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt; with per_line_prompts on, one prompt per line, chunk by chunk "
                                        "(the last line carries on)."),
                io.String.Input("negative_prompt", multiline=True, default=""),
                io.Int.Input("frames_to_add", default=64, min=1, max=MAX_FRAMES_TO_ADD,
                             tooltip="Rounded up to whole chunks of 8 new frames."),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Float.Input("guidance", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="DDIM eta (1: the official stochastic sampler)."),
                io.Int.Input("seed", default=33, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="One generator for the whole run; 33 with the official settings "
                                     "reproduces the official stream."),
                io.Boolean.Input("per_line_prompts", default=False,
                                 tooltip="One prompt per line, applied chunk by chunk (a story across the video)."),
                APMAnchor.Input("anchor", optional=True,
                                tooltip="APM anchor from AnchorFrameAPM. Default: the stream's anchor so far, "
                                        "else its frame 0."),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip=MEMORY_TOOLTIP),
            ],
            outputs=[Stream.Output("extended_stream", display_name="stream"),
                     io.String.Output("info", display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, frames_to_add=64, prompt="", per_line_prompts=False, memory="auto"):
        # Linked inputs arrive as None here; execute checks them again.
        if memory is not None and memory_mode_problem(memory):
            return memory_mode_problem(memory)
        if frames_to_add is not None and not 1 <= frames_to_add <= MAX_FRAMES_TO_ADD:
            return (f"frames_to_add: {frames_to_add} frames cannot be added; give 1 to {MAX_FRAMES_TO_ADD} "
                    f"(rounded up to whole chunks of {CHUNK_NEW_FRAMES})")
        if prompt is not None and per_line_prompts and not split_prompts(prompt, True):
            return EMPTY_PROMPT_LIST
        return True

    @classmethod
    def check_lazy_status(cls, model=None, prompt=None, frames_to_add=64, per_line_prompts=False, **_inputs):
        empty = prompt is not None and not split_prompts(prompt, per_line_prompts)
        if model is not None or frames_to_add < 1 or empty:
            return []  # bad input fails in execute without the model
        return ["model"]

    @classmethod
    def execute(cls, model, stream: StreamState, prompt, negative_prompt, frames_to_add, steps, guidance, eta,
                seed, per_line_prompts, anchor: Anchor | None = None, memory="auto") -> io.NodeOutput:
        from ..streamingt2v_core.streaming import chunks_for_frames, extend_video

        # Cheap checks first: nothing heavy runs on bad input.
        if frames_to_add < 1:
            raise ValueError(f"frames_to_add: {frames_to_add}; add at least 1 frame "
                             f"(rounded up to whole chunks of {CHUNK_NEW_FRAMES})")
        prompts = split_prompts(prompt, per_line_prompts)
        if not prompts:
            raise ValueError(EMPTY_PROMPT_LIST)
        cfg = model.module.config
        if stream.num_frames < cfg.cond_frames:
            raise ValueError(f"stream: {stream.num_frames} frames, the CAM needs the last {cfg.cond_frames}; "
                             f"start from at least {cfg.cond_frames} frames")
        sf = cfg.vae_scale_factor
        if stream.height % sf or stream.width % sf:
            raise ValueError(f"stream: frames are {stream.width}x{stream.height}; width and height must be "
                             f"divisible by {sf}: resize them in the init node")
        num_chunks = chunks_for_frames(frames_to_add, CHUNK_NEW_FRAMES)
        added = num_chunks * CHUNK_NEW_FRAMES
        per_chunk = chunk_prompts(prompts, num_chunks)
        notes = [f"frames_to_add {frames_to_add} -> {num_chunks} chunk(s) x {CHUNK_NEW_FRAMES} new frames = "
                 f"{added} frames" + (" (rounded up to whole chunks)" if added != frames_to_add else "")]
        if per_line_prompts and len(prompts) != num_chunks:
            notes.append(f"{len(prompts)} prompt line(s) for {num_chunks} chunk(s): "
                         + ("the last line carries on" if len(prompts) < num_chunks
                            else f"lines after {num_chunks} are not used"))

        total = num_chunks * steps
        pbar = comfy.utils.ProgressBar(total)
        done = [0]
        new_chunks = []

        def on_step(_step, _total):
            mm.throw_exception_if_processing_interrupted()
            done[0] += 1
            simulate_oom_for_tests((done[0] - 1) // steps)  # no-op unless the OOM test seam is set
            pbar.update_absolute(done[0], total)

        def on_chunk(index, frames):
            image = frames_to_image(frames)  # CPU at once: the accelerator holds one chunk at most
            new_chunks.append(image)
            pbar.update_absolute(done[0], total, preview(image[-1]))
            log.info("StreamingT2V: chunk %d/%d done (%d frames so far)", index + 1, num_chunks,
                     stream.num_frames + CHUNK_NEW_FRAMES * (index + 1))

        if memory_mode_problem(memory):  # before the model loads
            raise ValueError(memory_mode_problem(memory))
        if anchor is not None and anchor.tokens.shape[-1] != cfg.context_dim:
            raise ValueError(f"anchor: APM tokens of width {anchor.tokens.shape[-1]}, this model needs "
                             f"{cfg.context_dim}; make the anchor with the same model")
        memory_settings = {"dtype": DTYPE_NAMES.get(model.module.dtype, str(model.module.dtype)),
                           "size": f"{stream.width}x{stream.height}", "frames_to_add": frames_to_add}
        if memory != "low vram":
            memory_settings["memory"] = memory
        try:
            with oom_advice("CAMExtendChunk", memory_settings):
                need = _memory_estimate(cfg, stream)
                st = model.on_device(memory_required=need)
                low = wants_low_memory(memory, not mm.is_device_cpu(st.device), mm.get_free_memory(st.device), need)
                notes.append("memory: " + (LOW_STAGE2 if low else "all parts on the device"))
                plan = (low_memory(st, st.device, OFFLOAD_PARTS, offload_device=mm.unet_offload_device()) if low
                        else contextlib.nullcontext())
                with plan:
                    if anchor is None:
                        anchor = stream.anchor or encode_anchor(st, stream.frame(0), "frame 0 of the stream")
                    extend_video(st, stream.tail(cfg.cond_frames), num_chunks, per_chunk, negative_prompt,
                                 anchor_tokens=anchor.tokens, steps=steps, guidance=guidance, eta=eta, seed=seed,
                                 on_step=on_step, on_chunk=on_chunk)
        except BaseException:  # interrupt, OOM, anything: free the accelerator, then let ComfyUI report it
            mm.soft_empty_cache()
            raise
        notes.append(f"stream: {stream.num_frames} -> {stream.num_frames + added} frames; anchor: {anchor.source}")
        info = "\n".join(notes)
        log.info("StreamingT2V: %s", info.replace("\n", "; "))
        return io.NodeOutput(stream.extended(new_chunks, per_chunk, anchor), info, ui=ui.PreviewText(info))


def _memory_estimate(cfg, stream: StreamState) -> int:
    """Activation memory for one guided chunk, scaled from 3 GB for the official 256x256 model: above the
    peaks counted on the meta device (bench/README.md: a step 0.7 GiB with fused attention, 1.7 GiB with the
    math kernel; decoding 8 frames 0.75 GiB), so `auto` offloads on 8 GB cards, where the margin is thin."""
    pixels = stream.height * stream.width * cfg.chunk_frames
    widest = max(cfg.unet["block_out_channels"])
    return int(3 * 1024 ** 3 * pixels / (256 * 256 * 16) * widest / 1280)


STREAM_NODES = [AnchorFrameAPM, CAMExtendChunk]
