"""Stage 2 nodes: the APM anchor and the autoregressive CAM extension loop."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..comfy_bridge.memory import applied_on, plan_on
from ..comfy_bridge.run import heavy_run
from ..streamingt2v_core.common.dtypes import dtype_name
from ..streamingt2v_core.common.memory import FEED_FORWARD_CHUNK, MEMORY_MODES, memory_mode_problem
from ..streamingt2v_core.t2v.extend import chunk_prompts, split_prompts
from .types import (OFFICIAL_CONFIG, SEED_MAX, APMAnchor, Anchor, Sampling, Stream, StreamingT2VModel,
                    StreamState, frames_to_image, image_to_frames)

log = logging.getLogger("StreamingT2V")

MAX_FRAMES_TO_ADD = 100_000
NEW_FRAMES = OFFICIAL_CONFIG.new_frames_per_chunk  # for tooltips; a loaded model's config decides when it runs
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
            description=f"Extends a stream chunk by chunk: each {OFFICIAL_CONFIG.chunk_frames}-frame chunk is denoised "
                        f"with the CAM reading the last {OFFICIAL_CONFIG.cond_frames} frames so far and the APM "
                        f"holding the anchor; {NEW_FRAMES} frames are new per chunk. "
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
                             tooltip=f"Rounded up to whole chunks of {NEW_FRAMES} new frames."),
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
                io.Boolean.Input("continue_generator", default=False, optional=True,
                                 tooltip="on: draw on from the generator where the stream's last CAM chunk left "
                                         "it (a loaded state or an earlier CAMExtendChunk), so a run split into "
                                         "steps equals one long run; the seed is used only when the stream has "
                                         "no generator yet. off: a new generator from seed."),
            ],
            outputs=[Stream.Output("extended_stream", display_name="stream"),
                     io.String.Output("info", display_name="info")],
        )

    @staticmethod
    def input_problem(frames_to_add, prompt, per_line_prompts, memory) -> str | None:
        """Why the inputs other than the model and stream cannot be used (None: fine). Linked inputs arrive
        as None at validation; execute checks them again."""
        if memory is not None and memory_mode_problem(memory):
            return memory_mode_problem(memory)
        if frames_to_add is not None and not 1 <= frames_to_add <= MAX_FRAMES_TO_ADD:
            return (f"frames_to_add: {frames_to_add} frames cannot be added; give 1 to {MAX_FRAMES_TO_ADD} "
                    f"(rounded up to whole chunks of {NEW_FRAMES})")
        if prompt is not None and not split_prompts(prompt, per_line_prompts):
            return EMPTY_PROMPT_LIST
        return None

    @classmethod
    def validate_inputs(cls, frames_to_add=64, prompt="", per_line_prompts=False, memory="auto"):
        return cls.input_problem(frames_to_add, prompt, per_line_prompts, memory) or True

    @classmethod
    def check_lazy_status(cls, model=None, prompt=None, frames_to_add=64, per_line_prompts=False, memory="auto",
                          **_inputs):
        # bad input fails in execute without the model: the loader is never run for it
        if model is not None or cls.input_problem(frames_to_add, prompt, per_line_prompts, memory):
            return []
        return ["model"]

    @classmethod
    def execute(cls, model, stream: StreamState, prompt, negative_prompt, frames_to_add, steps, guidance, eta,
                seed, per_line_prompts, anchor: Anchor | None = None, memory="auto",
                continue_generator=False) -> io.NodeOutput:
        from ..streamingt2v_core.t2v.extend import chunks_for_frames, extend_video, stream_problem
        from ..streamingt2v_core.stream_state import make_generator
        from ..streamingt2v_core.t2v.memory import OFFLOAD_PARTS, chunk_need_bytes
        from .state import model_identity_of

        # Cheap checks first: nothing heavy runs (and no model loads) on bad input.
        problem = cls.input_problem(frames_to_add, prompt, per_line_prompts, memory)
        if problem:
            raise ValueError(problem)
        prompts = split_prompts(prompt, per_line_prompts)
        cfg = model.module.config
        problem = stream_problem(cfg, stream.num_frames, stream.height, stream.width)
        if problem:
            raise ValueError(problem)
        if anchor is not None and anchor.tokens.shape[-1] != cfg.context_dim:
            raise ValueError(f"anchor: APM tokens of width {anchor.tokens.shape[-1]}, this model needs "
                             f"{cfg.context_dim}; make the anchor with the same model")
        new_frames = cfg.new_frames_per_chunk
        num_chunks = chunks_for_frames(frames_to_add, new_frames)
        added = num_chunks * new_frames
        per_chunk = chunk_prompts(prompts, num_chunks)
        notes = [f"frames_to_add {frames_to_add} -> {num_chunks} chunk(s) x {new_frames} new frames = "
                 f"{added} frames" + (" (rounded up to whole chunks)" if added != frames_to_add else "")]
        if per_line_prompts and len(prompts) != num_chunks:
            notes.append(f"{len(prompts)} prompt line(s) for {num_chunks} chunk(s): "
                         + ("the last line carries on" if len(prompts) < num_chunks
                            else f"lines after {num_chunks} are not used"))

        carried = stream.sampling if continue_generator else None
        if carried is not None:
            notes += continuation_notes(carried, negative_prompt, steps, guidance, eta)
            notes.append(f"generator: continued from the stream (seed {carried.seed}, {len(stream.prompts)} chunks "
                         "so far)")
        else:
            notes.append(f"generator: seeded with {seed}")
        generator = make_generator(seed, None if carried is None else carried.generator_state)
        identity = model_identity_of(model)
        settings = {"dtype": dtype_name(model.module.dtype), "size": f"{stream.width}x{stream.height}",
                    "frames_to_add": frames_to_add}
        if memory != "low vram":
            settings["memory"] = memory
        new_chunks = []
        with heavy_run("CAMExtendChunk", settings, num_chunks * steps, steps_per_chunk=steps) as run:
            def on_chunk(index, frames):
                image = frames_to_image(frames)  # CPU at once: the accelerator holds one chunk at most
                new_chunks.append(image)
                run.show(image[-1])
                log.info("StreamingT2V: chunk %d/%d done (%d frames so far)", index + 1, num_chunks,
                         stream.num_frames + new_frames * (index + 1))

            need = chunk_need_bytes(cfg, stream.height, stream.width)
            st = model.on_device(memory_required=need)
            plan, _free = plan_on(st.device, memory, need, parts=OFFLOAD_PARTS)
            notes.append("memory: " + (LOW_STAGE2 if plan.low else "all parts on the device"))
            with applied_on(plan, st, st.device):
                if anchor is None:
                    anchor = stream.anchor or encode_anchor(st, stream.frame(0), "frame 0 of the stream")
                extend_video(st, stream.tail(cfg.cond_frames), num_chunks, per_chunk, negative_prompt,
                             anchor_tokens=anchor.tokens, steps=steps, guidance=guidance, eta=eta,
                             generator=generator, on_step=lambda done, _total: run.step(done), on_chunk=on_chunk)
        notes.append(f"stream: {stream.num_frames} -> {stream.num_frames + added} frames; anchor: {anchor.source}")
        info = "\n".join(notes)
        log.info("StreamingT2V: %s", info.replace("\n", "; "))
        sampling = Sampling(seed=seed if carried is None else carried.seed, generator_state=generator.get_state(),
                            negative_prompt=negative_prompt, steps=steps, guidance=float(guidance), eta=float(eta),
                            cond_frames=cfg.cond_frames, model=identity)
        return io.NodeOutput(stream.extended(new_chunks, per_chunk, anchor, sampling), info,
                             ui=ui.PreviewText(info))


def continuation_notes(carried: Sampling, negative_prompt, steps, guidance, eta) -> list:
    """Settings that differ from the chunks before: the frames then differ from one uninterrupted run."""
    now = {"negative_prompt": negative_prompt, "steps": steps, "guidance": float(guidance), "eta": float(eta)}
    return [f"{k}: {v!r} here, {getattr(carried, k)!r} for the chunks before (the frames will differ from one "
            "uninterrupted run)" for k, v in now.items() if getattr(carried, k) != v]


EXTEND_NODES = [AnchorFrameAPM, CAMExtendChunk]
